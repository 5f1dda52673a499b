"""Every notebook's real-model branch, executed by nbmake on the CPU against the tiny SD-shaped model.

A Colab learner runs the notebooks with ``PROFILE = "sd15"``. Here each notebook runs as it is
committed, with one change (``tests/real_branch.py``): after its config cell, nbmake's
``post_cell_execute`` hook sets ``PROFILE`` to the sd15 profile moved onto the CPU and the fixture
(`sd_shaped.cpu_profile`) and shrinks sizes (steps, image counts, resolution). So a missing
variable, a wrong device or an fp16 copy in a real-model branch fails here, not on a learner's T4.
The executed copies are kept under ``outputs/real-branch/`` to read.
"""

import pytest
import real_branch

EXECUTED = real_branch.ROOT / "outputs" / "real-branch"


@pytest.mark.parametrize("name", list(real_branch.SIZES))
def test_real_branch(name, sd_folders, tmp_path):
    lines = real_branch.override(name, sd_folders, "PROFILE = sd_shaped.cpu_profile(FIXTURE)")
    notebook = real_branch.with_override(real_branch.ROOT / "notebooks" / f"{name}.ipynb", lines, tmp_path)
    error = real_branch.run(notebook, EXECUTED)
    assert error is None, f"{name}: {error.summary}\n{error.trace[-3000:]}"
