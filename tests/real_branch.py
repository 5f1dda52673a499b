"""Running a notebook's real-model branch: the notebook as committed, with a profile and sizes put in.

nbmake's ``post_cell_execute`` hook runs extra lines after a cell; here they follow the config cell
(the one tagged ``parameters``) and set ``PROFILE`` to a given `Profile` and shrink sizes, and after
the last cell they check that the notebook did run on that profile. ``tests/course/test_real_branches.py``
runs every notebook this way on the CPU against the tiny SD-shaped model; ``benchmarks/gpu_notebooks.py``
runs them on a GPU against SD 1.5-sized random weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbmake.nb_run import NotebookRun

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# The notebooks whose real-model branch CI runs. Each runs at its own SETTINGS' "ci" sizes (``SIZES = "ci"``,
# helpers.course.settings); the lines below give only what the fixture has besides the profile's model.
NOTEBOOKS = [
    "00_setup",
    "01_add_noise_n_and_n-1",
    "02_denoising_loss",
    "03_generate_class_priors",
    "04_dreambooth_8bit_adam",
    "05_language_drift",
    "06_identifier_and_text_encoder",
    "07_lora_dreambooth",
    "08_super_resolution_finetune",
    "11_flow_matching",
    "12_flow_lora_dreambooth",
]
MODEL_PATHS = {"08_super_resolution_finetune": 'X4["upscaler"]["ci"] = FIXTURE.upscaler'}
# The fixture each notebook's real branch runs on (``sd_shaped`` unless named here), and the profile it checks.
FIXTURES = {"11_flow_matching": "sd3_shaped", "12_flow_lora_dreambooth": "sd3_shaped"}
REAL_PROFILES = {"sd_shaped": "sd15", "sd3_shaped": "sd35"}


def fixture_module(name: str) -> str:
    return FIXTURES.get(name, "sd_shaped")


def override(name: str, folders, profile_line: str, steps: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The lines run after the config cell: the fixture's folders, the profile, the notebook's "ci" sizes
    (with ``steps``, a fine-tune's step count in place of the "ci" one)."""
    module = fixture_module(name)
    lines = [
        f"import sys; sys.path.insert(0, {str(TESTS)!r})",
        f"import {module}",
        f"FIXTURE = {module}.Folders(**{ {k: str(v) for k, v in vars(folders).items()}!r})",  # paths as str
        profile_line,
        'SIZES = "ci"',
    ]
    if name in MODEL_PATHS:
        lines.append(MODEL_PATHS[name])
    if steps is not None:
        lines.append(f"SETTINGS['max_train_steps']['ci'] = {steps}")
    return lines + list(extra)


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


def replace_flags(words: list[str], values: dict[str, str]) -> list[str]:
    """``words`` with the value of each named flag replaced; a flag the command lacks is an error."""
    words = list(words)
    for flag, value in values.items():
        words[words.index(f"--{flag}") + 1] = value
    return words
