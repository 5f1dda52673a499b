"""Pushing a trained output folder to the Hugging Face hub, or saying in one line why not.

``--push_to_hub`` is checked before training starts (a run of an hour should not end in "you are
offline"); if the network drops during the run, the push at the end is one warning with the
command to push the folder later, and the folder stays as it was written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from helpers.core.errors import UsageError
from helpers.diffusion.profiles import hub_reachable

IGNORED = ["checkpoint-*", "checkpoint-*/**", "logs/**", ".*"]  # what diffusers' scripts leave out of a push


def repo_name(output_dir: str | Path, hub_model_id: str | None) -> str:
    """The repository a push goes to: ``--hub_model_id``, or the output folder's name (diffusers' default)."""
    return hub_model_id or Path(output_dir).resolve().name


def check_push(output_dir: str | Path, hub_model_id: str | None, token: str | None) -> None:
    """Fail in one line, before any training, when a push could not happen."""
    from huggingface_hub import get_token

    repo = repo_name(output_dir, hub_model_id)
    if not hub_reachable():
        raise UsageError(
            f"--push_to_hub: the Hugging Face hub cannot be reached (offline, or HF_HUB_OFFLINE=1); train without "
            f"it and push later with `hf upload {repo} {output_dir}`"
        )
    if not (token or get_token()):
        raise UsageError(
            "--push_to_hub needs a Hugging Face token: run `hf auth login` (notebook_login() in Colab) "
            "or pass --hub_token"
        )


def push_folder(folder: Path, hub_model_id: str | None, token: str | None) -> str | None:
    """Upload ``folder`` (its model card included, checkpoints and logs left out); the repository's URL,
    or None after one warning when the upload fails."""
    from huggingface_hub import create_repo, upload_folder

    repo = repo_name(folder, hub_model_id)
    try:
        repo = create_repo(repo, exist_ok=True, token=token).repo_id
        upload_folder(
            repo_id=repo, folder_path=folder, commit_message="End of training", ignore_patterns=IGNORED, token=token
        )
    except Exception as err:  # network, authentication or hub errors alike: the folder is safe either way
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"could not push {folder} to the hub ({reason}); it is saved there: push it later with "
            f"`hf upload {repo} {folder}`",
            stacklevel=2,
        )
        return None
    return f"https://huggingface.co/{repo}"
