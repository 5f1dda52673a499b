"""Every notebook's real-model branch, executed by nbmake on the CPU against a tiny model of the hub's shape.

A Colab learner runs the notebooks with ``PROFILE = "sd15"`` (the flow-matching ones with ``"sd35"``).
Here each notebook runs as it is committed, with one change (``tests/real_branch.py``): after its config
cell, nbmake's ``post_cell_execute`` hook sets ``PROFILE`` to the real profile moved onto the CPU and the
tiny SD 1.x-shaped fixture (`sd_shaped.cpu_profile`) or SD 3.5-shaped one (`sd3_shaped.cpu_profile`),
and sets ``SIZES = "ci"``: the sizes CI runs (steps, image counts) are the "ci" column of the notebook's own
SETTINGS table. So a missing variable, a wrong device or an fp16 copy in a real-model branch fails here, not
on a learner's T4. The executed copies are kept under
``outputs/real-branch/`` to read.
"""

import pytest
import real_branch

EXECUTED = real_branch.ROOT / "outputs" / "real-branch"


@pytest.mark.parametrize("name", real_branch.NOTEBOOKS)
def test_real_branch(name, request, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path / "outputs"))  # the kernel's own: nothing shared, nothing stale
    module = real_branch.fixture_module(name)
    folders = request.getfixturevalue({"sd_shaped": "sd_folders", "sd3_shaped": "sd3_folders"}[module])
    lines = real_branch.override(name, folders, f"PROFILE = {module}.cpu_profile(FIXTURE)")
    notebook = real_branch.with_override(real_branch.ROOT / "notebooks" / f"{name}.ipynb", lines, tmp_path)
    error = real_branch.run(notebook, EXECUTED)
    assert error is None, f"{name}: {error.summary}\n{error.trace[-3000:]}"
