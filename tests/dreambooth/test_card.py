"""The model card written with every DreamBooth and LoRA output, and --push_to_hub."""

import pytest
from huggingface_hub import ModelCard
from toy_dreambooth import SUBJECT, toy_config

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion import hub
from helpers.diffusion.profiles import TOY_MODEL
from helpers.dreambooth.card import base_name, photo_credit
from helpers.dreambooth.trainer import TrainConfig, train


def _config(out, **kw) -> TrainConfig:
    return toy_config(out, **(dict(max_train_steps=2) | kw))


def test_a_full_run_writes_a_card_with_its_settings_command_and_samples(tmp_path):
    config = _config(tmp_path, validation_prompt="a photo of sks dog", validation_steps=2, hub_token="hf_secret")
    train(config)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "diffusers" and card.data.license == "apache-2.0"
    assert card.data.instance_prompt == "a photo of sks dog" and "dreambooth" in card.data.tags
    assert card.data.widget == [{"text": "a photo of sks dog", "output": {"url": "validation/step-00002.png"}}]
    assert "| learning rate | 0.0001 (constant) |" in card.text and "| steps | 2, batch 1 x 1 |" in card.text
    assert f"--instance_data_dir {SUBJECT}" in card.text and "--max_train_steps 2" in card.text
    assert "![step 2](validation/step-00002.png)" in card.text and (tmp_path / "validation/step-00002.png").exists()
    assert "hf_secret" not in (tmp_path / "README.md").read_text()
    assert "hf_secret" not in (tmp_path / "train_result.json").read_text()
    assert base_name(str(TOY_MODEL)) == "toy" and base_name("some/hub-model") == "some/hub-model"


def test_a_lora_card_says_how_to_load_it_and_credits_the_datasets_photos(tmp_path):
    train(_config(tmp_path, lora_rank=2, class_prompt="a photo of dog"))
    card = ModelCard.load(tmp_path / "README.md")
    assert "lora" in card.data.tags and "LoRA adapters (rank 2, alpha 2)" in card.text
    assert 'pipe.load_lora_weights("path/to/this/folder")' in card.text
    assert "None drawn: pass `--validation_prompt`" in card.text
    assert "## Photos" not in card.text  # toy photos: no licence to credit
    credit = photo_credit(str(ROOT / "data" / "dreambooth" / "dog"))
    assert "CC-BY-4.0 (credit: https://unsplash.com/@alvannee)" in credit and photo_credit(SUBJECT) is None


def test_push_to_hub_offline_is_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match=r"--push_to_hub: the Hugging Face hub cannot be reached .*`hf upload "):
        train(_config(tmp_path / "out", push_to_hub=True))
    assert not (tmp_path / "out").exists()


def test_push_to_hub_uploads_the_folder_with_its_card_or_warns_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    pushed = []

    class Repo:
        repo_id = "learner/sks-dog"

    def upload_folder(repo_id, folder_path, ignore_patterns, **kw):
        pushed.append((repo_id, sorted(p.name for p in folder_path.iterdir()), ignore_patterns))

    monkeypatch.setattr("huggingface_hub.create_repo", lambda repo, **kw: Repo())
    monkeypatch.setattr("huggingface_hub.upload_folder", upload_folder)
    result = train(_config(tmp_path / "sks-dog", push_to_hub=True, hub_token="hf_x", checkpointing_steps=2))
    assert result.hub_url == "https://huggingface.co/learner/sks-dog"
    [(repo, files, ignored)] = pushed
    assert repo == "learner/sks-dog" and "README.md" in files and "unet" in files and "checkpoint-*" in ignored

    def offline(*args, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr("huggingface_hub.upload_folder", offline)
    with pytest.warns(UserWarning, match=r"could not push .* \(Failed to resolve 'huggingface.co'\); it is saved"):
        result = train(_config(tmp_path / "again", push_to_hub=True, hub_token="hf_x"))
    assert result.hub_url is None and (tmp_path / "again" / "README.md").exists()
