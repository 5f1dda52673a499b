"""The executed copies that `make course` writes show what a learner saw at the end of each cell."""

from pathlib import Path

import nbformat
import pytest

from helpers.course import runner
from helpers.course.runner import INTERACTIVE, WIDGET_STATE, WIDGET_VIEW, NotebookFailed, execute, finish_widgets


def _bar_notebook(value: float, total: float) -> nbformat.NotebookNode:
    state = {
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
        "l": {"model_name": "HTMLModel", "state": {"value": "dreambooth:\u2007100%"}},
        "p": {"model_name": "FloatProgressModel", "state": {"value": value, "max": total}},
        "r": {"model_name": "HTMLModel", "state": {"value": "\u2007300/300\u2007[00:51&lt;00:00]"}},
    }
    nb = nbformat.v4.new_notebook(metadata={"widgets": {WIDGET_STATE: {"state": state}}})
    bar = nbformat.v4.new_output(
        "display_data", data={WIDGET_VIEW: {"model_id": "bar"}, "text/plain": "dreambooth:   0%|          | 0/300"}
    )
    other = nbformat.v4.new_output("display_data", data={"text/plain": "a figure"})
    nb.cells = [nbformat.v4.new_code_cell("train()", outputs=[bar, other])]
    return nb


def test_a_progress_bar_is_saved_at_its_final_frame():
    nb = _bar_notebook(300.0, 300.0)
    assert finish_widgets(nb) == 1
    outputs = nb.cells[0].outputs
    assert outputs[0]["data"]["text/plain"] == "dreambooth: 100%|██████████| 300/300 [00:51<00:00]"
    assert outputs[1]["data"]["text/plain"] == "a figure"


def test_a_bar_stopped_half_way_is_drawn_half_full():
    nb = _bar_notebook(150.0, 300.0)
    finish_widgets(nb)
    assert "|█████     |" in nb.cells[0].outputs[0]["data"]["text/plain"]


def test_a_widget_that_is_not_a_progress_bar_says_it_is_interactive():
    nb = _bar_notebook(1.0, 1.0)
    nb.metadata["widgets"][WIDGET_STATE]["state"]["bar"]["model_name"] = "VBoxModel"
    assert finish_widgets(nb) == 0
    assert nb.cells[0].outputs[0]["data"]["text/plain"] == INTERACTIVE
    assert nb.cells[0].outputs[1]["data"]["text/plain"] == "a figure"


def _notebook(*sources: str, folder: Path) -> Path:
    path = folder / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), path)
    return path


def test_a_failing_cell_is_one_line_naming_it_and_the_executed_copy_shows_the_error(tmp_path):
    (tmp_path / "out" / "notebooks").mkdir(parents=True)
    notebook = _notebook("x = 1", "1 / 0", "print('never')", folder=tmp_path)
    with pytest.raises(NotebookFailed) as failure:
        execute(notebook, tmp_path / "out")
    assert str(failure.value) == "cell 2: ZeroDivisionError: division by zero"
    copy = nbformat.read(tmp_path / "out" / "notebooks" / "nb.ipynb", as_version=4)
    assert copy.cells[1].outputs[0]["ename"] == "ZeroDivisionError" and copy.cells[2].outputs == []


def test_a_notebook_runs_without_the_kernels_plain_text_transport_warning_and_its_kernel_ends(
    tmp_path, capfd, monkeypatch
):
    managers = []
    make = runner._kernel_manager
    monkeypatch.setattr(runner, "_kernel_manager", lambda folder: managers.append(make(folder)) or managers[-1])
    (tmp_path / "out" / "notebooks").mkdir(parents=True)
    execute(_notebook("print(6 * 7)", folder=tmp_path), tmp_path / "out")
    assert managers and not managers[0].has_kernel  # shut down, not left running until the runner exits
    copy = nbformat.read(tmp_path / "out" / "notebooks" / "nb.ipynb", as_version=4)
    assert copy.cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err


def test_every_notebook_that_caches_class_images_runs_in_the_make_test_stream_that_shares_them():
    """`make test` runs two streams side by side (tests/conftest.py); a notebook drawing class images into the
    shared cache from the other stream could write the same folder at the same time as one of these."""
    from conftest import OWN_CLASS_IMAGES, ROOT, SHARED_CLASS_IMAGES

    users = {
        f"notebooks/{path.name}"
        for path in (ROOT / "notebooks").glob("*.ipynb")
        if "class_data_dir(" in path.read_text() and not f"notebooks/{path.name}".startswith(OWN_CLASS_IMAGES)
    }
    assert users and all(name.startswith(SHARED_CLASS_IMAGES) for name in users), sorted(users)


def test_the_notebooks_sharing_class_images_are_one_unit_in_order_and_every_other_notebook_its_own():
    names = ["00_setup", "03_priors", "04_dreambooth", "05_drift", "08_upscaler", "12_flow"]
    units = runner.work_units([Path(f"{n}.ipynb") for n in names])
    assert [[nb.stem for nb in unit] for unit in units] == [
        ["03_priors", "04_dreambooth", "05_drift"],
        ["00_setup"],
        ["08_upscaler"],
        ["12_flow"],
    ]


def _timed_notebook(folder: Path, name: str, log: Path) -> Path:
    """A notebook that logs when it starts and ends, and the threads its kernel was given."""
    path = folder / f"{name}.ipynb"
    source = (
        "import os, time\n"
        f"log = open({str(log)!r}, 'a')\n"
        f"log.write(f'{name} start {{time.time()}} {{os.environ.get(\"OMP_NUM_THREADS\")}}\\n'); log.flush()\n"
        "time.sleep(1.5)\n"
        f"log.write(f'{name} end {{time.time()}} -\\n'); log.close()"
    )
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)]), path)
    return path


def test_two_jobs_run_notebooks_side_by_side_at_half_the_threads_but_keep_the_shared_ones_in_order(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 2)
    log = tmp_path / "log.txt"
    chosen = [_timed_notebook(tmp_path, n, log) for n in ("03_a", "04_b", "09_c")]
    (tmp_path / "out" / "notebooks").mkdir(parents=True)
    report = runner.run_course(chosen, tmp_path / "out", jobs=2)
    assert sorted(name for name, _ in report) == ["03_a.ipynb", "04_b.ipynb", "09_c.ipynb"]
    assert all(isinstance(seconds, float) for _, seconds in report)
    events = {(n, what): (float(t), threads) for n, what, t, threads in (line.split() for line in log.open())}
    assert events[("03_a", "end")][0] <= events[("04_b", "start")][0]  # the shared unit, in order
    assert events[("09_c", "start")][0] < events[("03_a", "end")][0]  # beside it, not after it
    assert {threads for (_, what), (_, threads) in events.items() if what == "start"} == {"1"}


def test_a_job_count_below_one_is_one_line():
    with pytest.raises(runner.UsageError, match=r"--jobs 0: give 1 or more"):
        runner.main(["--jobs", "0"])
