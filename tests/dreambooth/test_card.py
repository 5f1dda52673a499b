"""The model card written with every DreamBooth and LoRA output, and --push_to_hub."""

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from toy_dreambooth import SUBJECT, toy_config

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.diffusion import hub
from helpers.diffusion.profiles import TOY_MODEL
from helpers.dreambooth.card import base_name, model_card, photo_credit
from helpers.dreambooth.trainer import TrainConfig, TrainResult, train


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
    assert "--instance_data_dir data/subjects/toy_dog" in card.text and "--max_train_steps 2" in card.text
    assert f"--output_dir {tmp_path.name}" in card.text and Path(SUBJECT).is_absolute()
    assert str(tmp_path) not in str(card) and str(ROOT) not in str(card)  # no path of this machine
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
    with pytest.raises(
        UsageError, match=r"--push_to_hub: the Hugging Face hub cannot be reached .*`python -m helpers.diffusion.hub "
    ):
        train(_config(tmp_path / "out", push_to_hub=True))
    assert not (tmp_path / "out").exists()


def test_push_to_hub_uploads_the_model_with_its_card_privately_or_warns_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    pushed, created = [], []

    class Repo:
        repo_id = "learner/sks-dog"

    def create_repo(repo, **kw):
        created.append(kw.get("private"))
        return Repo()

    def upload_folder(repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kw):
        files = [p.relative_to(folder_path).as_posix() for p in folder_path.rglob("*") if p.is_file()]
        pushed.append(
            (
                repo_id,
                sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)),
            )
        )

    monkeypatch.setattr("huggingface_hub.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.upload_folder", upload_folder)
    result = train(_config(tmp_path / "sks-dog", push_to_hub=True, hub_token="hf_x", checkpointing_steps=2))
    assert result.hub_url == "https://huggingface.co/learner/sks-dog" and created == [True]
    [(repo, files)] = pushed
    parts = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    parts += ["text_encoder/model.safetensors", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json"]
    parts += [f"{name}/config.json" for name in ("unet", "vae", "text_encoder")] + ["tokenizer/tokenizer_config.json"]
    assert repo == "learner/sks-dog" and files == sorted(["README.md", "model_index.json", *parts])
    assert (tmp_path / "sks-dog" / "checkpoint-2").is_dir()  # there, and left out like the run records
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/", ".")) or "/." in f or f in hub.RUN_RECORDS]

    def offline(*args, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr("huggingface_hub.upload_folder", offline)
    with pytest.warns(UserWarning, match=r"could not push .* \(Failed to resolve 'huggingface.co'\); it is saved"):
        result = train(_config(tmp_path / "again", push_to_hub=True, hub_token="hf_x", hub_public=True))
    assert result.hub_url is None and (tmp_path / "again" / "README.md").exists() and created == [True, False]


def test_the_card_names_no_local_path_and_the_token_stays_out_of_repr(tmp_path):
    home = "/home/learner"
    out = tmp_path / "rex-out"
    config = TrainConfig(
        output_dir=str(out),
        pretrained_model_name_or_path=f"{home}/models/sd15",
        instance_data_dir=f"{home}/photos/rex",
        instance_prompt="a photo of sks dog",
        class_data_dir=f"{home}/cache/dogs",
        class_prompt="a photo of dog",
        with_prior_preservation=True,
        resume_from_checkpoint=str(out / "checkpoint-4"),
        validation_prompt="a photo of sks dog",
        hub_token="hf_secret",
    )
    result = TrainResult(output_dir=str(out), steps=4, seconds=2.0, steps_per_second=2.0)
    result.validation_grids = [str(out / "validation" / "step-00004.png")]
    card = str(model_card(config, result, out))
    assert home not in card and str(tmp_path) not in card and "hf_secret" not in card
    for flag in ("--pretrained_model_name_or_path sd15", "--instance_data_dir rex", "--class_data_dir dogs"):
        assert flag in card
    assert f"--output_dir {out.name}" in card and "--resume_from_checkpoint checkpoint-4" in card
    assert "| base model | `sd15` |" in card and "validation/step-00004.png" in card
    assert config.instance_data_dir == f"{home}/photos/rex"  # the run's own settings are untouched
    assert "hf_secret" not in repr(config) and "hf_secret" not in str(config) and config.hub_token == "hf_secret"
