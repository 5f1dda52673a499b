"""--push_to_hub: what a model repository needs goes up, into a private repository; nothing else does."""

import json

import pytest
from huggingface_hub.utils import filter_repo_objects

from helpers.core.errors import UsageError
from helpers.diffusion import hub

COMPONENT = ["diffusers", "AnyModel"]
PIPELINE = {  # a full fine-tune's output: every file of it goes up
    "README.md": "---\nlibrary_name: diffusers\n---\n# card",
    "model_index.json": json.dumps(
        {
            "_class_name": "StableDiffusionPipeline",
            **{n: COMPONENT for n in ("unet", "text_encoder", "tokenizer", "vae", "scheduler")},
            "safety_checker": [None, None],
        }
    ),
    "unet/config.json": "{}",
    "unet/diffusion_pytorch_model.safetensors": "weights",
    "text_encoder/config.json": "{}",
    "text_encoder/model.safetensors": "weights",
    "tokenizer/merges.txt": "merges",
    "tokenizer/vocab.json": "{}",
    "tokenizer/tokenizer_config.json": "{}",
    "tokenizer/special_tokens_map.json": "{}",
    "vae/config.json": "{}",
    "vae/diffusion_pytorch_model.safetensors": "weights",
    "scheduler/scheduler_config.json": "{}",
    "validation/step-00002.png": "png",
    "validation/step-00004.png": "png",
}
LEFT_OUT = {  # what else a learner's output folder may hold: none of it goes up
    "train_result.json": "{}",
    "loss_history.json": "[]",
    ".made-by.json": "{}",
    "logs/dreambooth/events.out.tfevents.1": "log",
    "checkpoint-2/unet/config.json": "{}",
    "checkpoint-2/unet/diffusion_pytorch_model.safetensors": "weights",
    "checkpoint-2/optimizer.bin": "optimizer",
    "checkpoint-2/random_states_0.pkl": "pickle",
    "class_images/0000.png": "png",
    "class_images/manifest.json": "{}",
    ".cache/huggingface/upload/unet.metadata": "cache",
    "unet/.notes.json": "{}",
    "validation/.DS_Store": "junk",
    "my-photo.jpg": "jpg",
    "notes.txt": "my notes",
    "tokenizer/old/vocab.json": "{}",
}


def _folder(root, files: dict):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def fake_hub(monkeypatch):
    """The hub calls replaced: what each would have created and uploaded, as upload_folder filters it."""
    calls = {"create": [], "uploaded": []}

    class Repo:
        repo_id = "learner/sks-dog"

    def create_repo(repo_id, **kw):
        calls["create"].append(kw)
        return Repo()

    def upload_folder(folder_path, allow_patterns=None, ignore_patterns=None, **kw):
        files = [p.relative_to(folder_path).as_posix() for p in folder_path.rglob("*") if p.is_file()]
        calls["uploaded"].append(
            sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        )

    monkeypatch.setattr("huggingface_hub.create_repo", create_repo)
    monkeypatch.setattr("huggingface_hub.upload_folder", upload_folder)
    return calls


def test_a_push_uploads_weights_configs_tokenizer_card_and_samples_into_a_private_repository(tmp_path, fake_hub):
    folder = _folder(tmp_path / "sks-dog", PIPELINE | LEFT_OUT)
    assert hub.hub_files(folder) == sorted(PIPELINE)
    assert hub.push_folder(folder, None, "hf_x") == "https://huggingface.co/learner/sks-dog"
    assert fake_hub["uploaded"] == [sorted(PIPELINE)]
    assert fake_hub["create"][0]["private"] is True and fake_hub["create"][0]["exist_ok"] is True
    hub.push_folder(folder, None, "hf_x", private=False)  # --hub_public
    assert fake_hub["create"][1]["private"] is False and fake_hub["uploaded"][1] == sorted(PIPELINE)


def test_a_lora_push_takes_the_adapters_and_the_kohya_export_but_no_local_base_path(tmp_path, fake_hub):
    lora = {
        "README.md": "# card",
        "pytorch_lora_weights.safetensors": "adapters",
        "pytorch_lora_weights_kohya.safetensors": "adapters",
        "validation/step-00004.png": "png",
    }
    base = {"lora_base.json": json.dumps({"base_model": "toy", "rank": 4, "alpha": 4})}
    folder = _folder(tmp_path / "lora", lora | base | LEFT_OUT)
    hub.push_folder(folder, "learner/sks-lora", None)
    assert fake_hub["uploaded"] == [sorted(lora | base)]
    (folder / "lora_base.json").write_text(json.dumps({"base_model": "/home/learner/models/sd15", "rank": 4}))
    assert hub.hub_files(folder) == sorted(lora)  # a folder of this machine means nothing on the hub


def test_push_later_is_its_own_command_and_says_why_not_in_one_line(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "sks-dog", PIPELINE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match=rf"push later with `python -m helpers.diffusion.hub {folder} --hub_public`"):
        hub.main([str(folder), "--hub_public"])
    with pytest.raises(UsageError, match=r"holds no model card \(README.md\): push the --output_dir of a finished run"):
        hub.main([str(tmp_path)])
