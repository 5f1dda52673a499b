"""Pushing a trained output folder to the Hugging Face hub, or saying in one line why not.

``--push_to_hub`` is checked before training starts (a run of an hour should not end in "you are
offline"); if the network drops during the run, the push at the end is one warning with the
command to push the folder later, and the folder stays as it was written.

A push uploads what a model repository needs and nothing else (`hub_files`): the weights and
configs, the tokenizer, the model card and the validation samples. The output folder also holds
checkpoints with optimizer states, logs, the course's records of the run, perhaps class images or
a cache: none of that is a model, some of it is large, and some of it is the learner's own. The
repository is created private unless the learner asks for a public one (``--hub_public``).

    python -m helpers.diffusion.hub OUTPUT_DIR [--hub_model_id ID] [--hub_public]   # push later
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

from helpers.core.errors import UsageError, first_line
from helpers.diffusion.profiles import hub_reachable

IGNORED = ["checkpoint-*", "logs/*", ".*", "*/.*"]  # never uploaded, whatever the list of files says
RUN_RECORDS = ("train_result.json", "loss_history.json")  # the course's records of a run, not part of a model
TOP_FILES = (".safetensors", ".json")  # a LoRA and its kohya export, a pipeline's model_index.json
COMPONENT_FILES = (".safetensors", ".json", ".txt", ".model")  # weights, configs, tokenizer vocabularies
IMAGES = (".png", ".jpg", ".jpeg", ".webp")
CARD, SAMPLES, LORA_BASE = "README.md", "validation", "lora_base.json"


def repo_name(output_dir: str | Path, hub_model_id: str | None) -> str:
    """The repository a push goes to: ``--hub_model_id``, or the output folder's name (diffusers' default)."""
    return hub_model_id or Path(output_dir).resolve().name


def push_later(folder: str | Path, hub_model_id: str | None, private: bool = True) -> str:
    """The command that pushes ``folder`` as the trainer would have (`hf upload` would send everything)."""
    words = ["python -m helpers.diffusion.hub", str(folder)]
    words += [f"--hub_model_id {hub_model_id}"] if hub_model_id else []
    return " ".join(words + ([] if private else ["--hub_public"]))


def check_push(output_dir: str | Path, hub_model_id: str | None, token: str | None, private: bool = True) -> None:
    """Fail in one line, before any training, when a push could not happen."""
    from huggingface_hub import get_token

    if not hub_reachable():
        raise UsageError(
            f"--push_to_hub: the Hugging Face hub cannot be reached (offline, or HF_HUB_OFFLINE=1); train without "
            f"it and push later with `{push_later(output_dir, hub_model_id, private)}`"
        )
    if not (token or get_token()):
        raise UsageError(
            "--push_to_hub needs a Hugging Face token: run `hf auth login` (notebook_login() in Colab) "
            "or pass --hub_token"
        )


def _visible_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files directly in ``folder`` with one of ``suffixes``, hidden ones left out."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes]


def _components(folder: Path) -> list[str]:
    """The pipeline's component folders as its ``model_index.json`` names them (unet, vae, tokenizer, ...):
    only those, so a class-image folder or a cache inside the output folder is never taken for one."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    names = index if isinstance(index, dict) else {}
    return [n for n in names if not n.startswith((".", "_")) and Path(n).name == n and (folder / n).is_dir()]


def _names_a_local_base(path: Path) -> bool:
    """A LoRA's note of its base model when the base is a folder on this machine: useless on the hub,
    and a local path the learner did not mean to publish."""
    try:
        return path.name == LORA_BASE and Path(str(json.loads(path.read_text())["base_model"])).is_absolute()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def hub_files(folder: str | Path) -> list[str]:
    """What a push uploads, relative to ``folder``: the card, the weights and configs at the top, each
    pipeline component's weights, configs and tokenizer files, and the validation samples; never
    checkpoints, logs, the run records, hidden files (``.made-by.json``), class images or caches."""
    folder = Path(folder)
    top = [p for p in _visible_files(folder, TOP_FILES) if p.name not in RUN_RECORDS and not _names_a_local_base(p)]
    card = [folder / CARD] if (folder / CARD).is_file() else []
    parts = [p for name in _components(folder) for p in _visible_files(folder / name, COMPONENT_FILES)]
    samples = _visible_files(folder / SAMPLES, IMAGES)
    return sorted(p.relative_to(folder).as_posix() for p in card + top + parts + samples)


def _literal(path: str) -> str:
    """``path`` as an fnmatch pattern that matches only itself (upload_folder's patterns are globs)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def push_folder(folder: Path, hub_model_id: str | None, token: str | None, private: bool = True) -> str | None:
    """Upload ``hub_files(folder)`` to a repository created private unless ``private`` is False (an
    existing repository keeps its visibility); the repository's URL, or None after one warning when
    the upload fails."""
    from huggingface_hub import create_repo, upload_folder

    repo = repo_name(folder, hub_model_id)
    try:
        repo = create_repo(repo, exist_ok=True, private=private, token=token).repo_id
        upload_folder(
            repo_id=repo,
            folder_path=folder,
            commit_message="End of training",
            allow_patterns=[_literal(f) for f in hub_files(folder)],
            ignore_patterns=IGNORED,
            token=token,
        )
    except Exception as err:  # network, authentication or hub errors alike: the folder is safe either way
        reason = first_line(err)
        warnings.warn(
            f"could not push {folder} to the hub ({reason}); it is saved there: push it later with "
            f"`{push_later(folder, hub_model_id, private)}`",
            stacklevel=2,
        )
        return None
    return f"https://huggingface.co/{repo}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.diffusion.hub",
        description="Push a finished output folder to the hub: weights, configs, card and samples only.",
    )
    parser.add_argument("folder", type=Path, help="a trainer's --output_dir")
    parser.add_argument("--hub_model_id", help="the repository (default: the folder's name)")
    parser.add_argument("--hub_public", action="store_true", help="create the repository public (default: private)")
    args = parser.parse_args(argv)
    if not (args.folder / CARD).is_file():
        raise UsageError(f"{args.folder} holds no model card ({CARD}): push the --output_dir of a finished run")
    check_push(args.folder, args.hub_model_id, None, not args.hub_public)
    url = push_folder(args.folder, args.hub_model_id, None, private=not args.hub_public)
    print(url or f"{args.folder} was not pushed")


if __name__ == "__main__":
    from helpers.core.cli import run_main

    run_main(main)
