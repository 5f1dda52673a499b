"""Running a notebook's real-model branch: the notebook as committed, with a profile and sizes put in.

nbmake's ``post_cell_execute`` hook runs extra lines after a cell; here they follow the config cell
(the one tagged ``parameters``) and set ``PROFILE`` to a given `Profile` and shrink sizes, and after
the last cell they check that the notebook did run on that profile. ``tests/course/test_real_branches.py``
runs every notebook this way on the CPU against the tiny SD-shaped model; ``benchmarks/gpu_notebooks.py``
runs them on a GPU against SD 1.5-sized random weights.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import nbformat
from nbmake.nb_run import NotebookRun

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# What each notebook shrinks, on top of the profile: steps, image and seed counts; nothing else.
SIZES = {
    "00_setup": "",
    "01_add_noise_n_and_n-1": "",
    "02_denoising_loss": "NUM_TIMESTEPS, DRAWS = 4, 2",
    "03_generate_class_priors": 'NUM_CLASS_IMAGES["sd15"] = 2',
    "04_dreambooth_8bit_adam": (
        'SETTINGS["steps"]["sd15"], SETTINGS["class_images"]["sd15"] = {steps}, 2\nSETTINGS["samples"]["sd15"] = 2\n'
        'SETTINGS["spot_steps"]["sd15"], SETTINGS["spot_every"]["sd15"], SETTINGS["spot_samples"]["sd15"] = 2, 1, 2\n'
        'SETTINGS["spot_class_images"]["sd15"] = 2'
    ),
    "05_language_drift": (
        'SETTINGS["steps"]["sd15"], SETTINGS["class_images"]["sd15"] = {steps}, 2\nSETTINGS["samples"]["sd15"] = 2'
    ),
    "06_identifier_and_text_encoder": (
        'SETTINGS["steps"]["sd15"], SETTINGS["class_images"]["sd15"] = {steps}, 2\n'
        'SETTINGS["samples"]["sd15"], SETTINGS["eval_steps"]["sd15"] = 2, 2\n'
        "SEEDS = SEEDS[:1]"
    ),
    "07_lora_dreambooth": (
        'SETTINGS["steps"]["sd15"], SETTINGS["class_images"]["sd15"] = {steps}, 2\n'
        'SETTINGS["samples"]["sd15"], SETTINGS["eval_steps"]["sd15"] = 2, 2\n'
        "SEEDS = SEEDS[:1]"
    ),
    "08_super_resolution_finetune": (
        "SD15.update(upscaler=FIXTURE.upscaler, low_size=16, sr_steps=2)\n"
        "TOY.update(finetune_steps=2, held_out=2, dreambooth_steps=2, sr_steps=2)"
    ),
    "11_flow_matching": "BATCH, LOSS_POINTS, DRAWS = 2, 3, 1",
}
# The fixture each notebook's real branch runs on (``sd_shaped`` unless named here), and the profile it checks.
FIXTURES = {"11_flow_matching": "sd3_shaped"}
REAL_PROFILES = {"sd_shaped": "sd15", "sd3_shaped": "sd35"}


def fixture_module(name: str) -> str:
    return FIXTURES.get(name, "sd_shaped")


def override(name: str, folders, profile_line: str, steps: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """The lines run after the config cell: the fixture's folders, the profile, the notebook's sizes."""
    module = fixture_module(name)
    return [
        f"import sys; sys.path.insert(0, {str(TESTS)!r})",
        f"import {module}",
        f"FIXTURE = {module}.Folders(**{ {k: str(v) for k, v in vars(folders).items()}!r})",  # paths as str
        profile_line,
        *SIZES[name].format(steps=steps).splitlines(),
        *extra,
    ]


def with_override(notebook: Path, after_config: list[str], folder: Path) -> Path:
    """A copy of ``notebook`` in ``folder`` whose config cell and last cell run the given lines after them."""
    nb = nbformat.read(notebook, as_version=4)
    config = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(config) == 1, f"{notebook.name} needs exactly one config cell tagged 'parameters'"
    config[0].metadata["nbmake"] = {"post_cell_execute": after_config}
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    real = REAL_PROFILES[fixture_module(notebook.stem)]
    last.metadata["nbmake"] = {
        "post_cell_execute": [f"assert profile.name == {real!r} and profile.model == FIXTURE.fp16"]
    }
    copy = Path(folder) / notebook.name
    nbformat.write(nb, copy)
    return copy


def run(notebook: Path, executed: Path, timeout: int = 900):
    """Execute with nbmake's runner; the executed copy is written to ``executed`` to read. Returns the error or None.

    The notebooks' own sd15 outputs from an earlier run are removed first: a finished fine-tune left
    there would be resumed (``resume_from_checkpoint="latest"``) instead of run."""
    for stale in (ROOT / "outputs").glob("*/sd15*"):
        shutil.rmtree(stale, ignore_errors=True)
    result = NotebookRun(notebook, timeout).execute()
    executed.mkdir(parents=True, exist_ok=True)
    nbformat.write(result.nb, executed / notebook.name)
    return result.error


def controlnet_command() -> list[str]:
    """The flags of the SD 1.5 command that notebook 09 shows (its backslash-continued lines joined)."""
    cells = json.loads((ROOT / "notebooks" / "09_train_controlnet.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown").replace("\\\n", " ")
    [line] = [
        line
        for line in text.splitlines()
        if line.startswith("python -m helpers.controlnet ")
        and "--pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5" in line
    ]
    return shlex.split(line)[3:]


def replace_flags(words: list[str], values: dict[str, str]) -> list[str]:
    """``words`` with the value of each named flag replaced; a flag the command lacks is an error."""
    words = list(words)
    for flag, value in values.items():
        words[words.index(f"--{flag}") + 1] = value
    return words
