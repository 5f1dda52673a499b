"""Run the whole course: execute every notebook on the toy profile into ``outputs/``.

    python -m helpers.course --output outputs --jobs 2     (what `make course` runs)

Executed notebooks land in ``outputs/notebooks/``; the figures they save land in
``outputs/figures/``. The committed notebooks are never modified.
"""

from __future__ import annotations

import argparse
import html
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT


def notebooks(folder: Path = ROOT / "notebooks") -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


# Notebooks 03-07 share the cached class images of the toy's "a photo of dog" (one folder per seed): run side
# by side, two of them could draw the same folder at once, so they always run one after another, in order.
SHARED_CLASS_IMAGES = ("03_", "04_", "05_", "06_", "07_")


def work_units(chosen: list[Path]) -> list[list[Path]]:
    """The chosen notebooks as units that may run side by side: the notebooks sharing class images form one
    unit (first, as the longest), every other notebook is a unit of its own."""
    shared = [nb for nb in chosen if nb.name.startswith(SHARED_CLASS_IMAGES)]
    return ([shared] if shared else []) + [[nb] for nb in chosen if nb not in shared]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _bar_text(state: dict, model_id: str) -> str | None:
    """A tqdm widget's final frame as text: its left label, a full bar, its right label."""
    model = state.get(model_id, {})
    children = [state.get(c.removeprefix("IPY_MODEL_"), {}) for c in model.get("state", {}).get("children", [])]
    if model.get("model_name") != "HBoxModel" or [c.get("model_name") for c in children] != [
        "HTMLModel",
        "FloatProgressModel",
        "HTMLModel",
    ]:
        return None
    left, bar, right = (c["state"] for c in children)
    filled = round(10 * bar["value"] / bar["max"]) if bar.get("max") else 0
    text = f"{left['value']}|{'█' * filled}{' ' * (10 - filled)}|{right['value']}"
    return html.unescape(text).replace("\u2007", " ")


INTERACTIVE = "(an interactive widget: run the notebook to use it)"


def finish_widgets(nb) -> int:
    """Give each widget's text fallback what a learner saw at the end; the number of bars rewritten.

    A widget's text fallback is captured when it is first displayed ("0%| 0/300", or a repr such as
    "VBox(children=(IntSlider(..."), and GitHub and most viewers show only that fallback. A progress
    bar gets its final frame, read from the widget state saved in the notebook's metadata; any other
    widget a line that says what it is."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    bars = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view:
                text = _bar_text(state, view["model_id"])
                out["data"]["text/plain"] = text or INTERACTIVE
                bars += bool(text)
    return bars


# No cell of the course takes more than a few minutes on a 2-core laptop (README): an hour leaves
# room for a machine many times slower and still ends a kernel that hangs.
CELL_TIMEOUT_S = 3600


class NotebookFailed(Exception):
    """A cell raised: the message is one line naming the cell and the error."""


def failed_cell(nb) -> str:
    """The first cell whose outputs hold an error, as 'cell N: ErrorName: message' (N counts from 1)."""
    for number, cell in enumerate(nb.cells, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first_line = (str(out.get("evalue", "")).strip().splitlines() or [""])[0]
                return f"cell {number}: {out.get('ename', 'Error')}" + (f": {first_line}" if first_line else "")
    return "a cell failed without an error output"


def _kernel_manager(folder: Path):
    """A kernel on IPC sockets in a private folder where the system has them: over TCP, ipykernel
    warns once per notebook that code and outputs travel in plain text. ``None`` (TCP) elsewhere."""
    if os.name != "posix":
        return None
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(folder / "kernel"))


def execute(notebook: Path, output: Path, timeout: int = CELL_TIMEOUT_S) -> float:
    """Execute one notebook in a fresh kernel, from the notebooks folder; returns seconds taken.
    The executed copy is written even when a cell fails (it shows the error where it happened);
    the failure is raised as ``NotebookFailed`` with one line that names the cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="course-kernel-") as sockets:
        client = NotebookClient(
            nb,
            km=_kernel_manager(Path(sockets)),
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(notebook.parent)}},
        )
        try:
            client.execute(cleanup_kc=True)  # shut the kernel down: a kernel manager passed in is not the client's
        except CellTimeoutError:
            raise NotebookFailed(f"a cell ran past {timeout} s and was stopped") from None
        except CellExecutionError:
            raise NotebookFailed(failed_cell(nb)) from None
        finally:
            finish_widgets(nb)
            nbformat.write(nb, output / "notebooks" / notebook.name)
    return time.perf_counter() - start


def _run_unit(unit: list[Path], output: Path, report: list, lock: threading.Lock) -> None:
    """Execute one unit's notebooks in order; each is reported as it ends: (name, seconds or failure)."""
    for nb in unit:
        try:
            outcome: float | NotebookFailed = execute(nb, output)
        except NotebookFailed as err:
            outcome = err
        with lock:
            report.append((nb.name, outcome))
            if isinstance(outcome, NotebookFailed):
                print(f"{nb.name:45s} FAILED at {outcome} (executed copy: {output}/notebooks/{nb.name})", flush=True)
            else:
                print(f"{nb.name:45s} {outcome:7.1f} s", flush=True)


def run_course(chosen: list[Path], output: Path, jobs: int = 1) -> list[tuple[str, float | NotebookFailed]]:
    """Execute ``chosen`` into ``output``, ``jobs`` notebooks side by side, each kernel then at
    cores / jobs threads: the toy models are too small for a second thread to speed a step by more than a
    fifth, so on two cores two notebooks at one thread each finish sooner than one after another at two."""
    if jobs > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))  # kernels inherit it
    report: list[tuple[str, float | NotebookFailed]] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done in [pool.submit(_run_unit, unit, output, report, lock) for unit in work_units(chosen)]:
            done.result()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "outputs")
    parser.add_argument("--only", default=None, help="run only notebooks whose name contains this text")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="notebooks run side by side (default 1); notebooks 03-07 always run one after another",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more notebooks to run side by side")
    chosen = [nb for nb in notebooks() if args.only is None or args.only in nb.name]
    if not chosen:
        raise UsageError(f"no notebook matches {args.only!r}")
    output = args.output.resolve()
    (output / "notebooks").mkdir(parents=True, exist_ok=True)
    os.environ["COURSE_OUTPUTS"] = str(output)
    os.environ.setdefault("COURSE_PROFILE", "toy")
    start = time.perf_counter()
    report = run_course(chosen, output, args.jobs)
    total = sum(outcome for _, outcome in report if isinstance(outcome, float))
    print(
        f"{'all notebooks':45s} {total:7.1f} s of notebooks, {time.perf_counter() - start:.1f} s on the clock "
        f"({args.jobs} at a time) -> {output}/notebooks, {output}/figures"
    )
    failed = [name for name, outcome in report if isinstance(outcome, NotebookFailed)]
    if failed:
        raise UsageError(f"{len(failed)} notebook(s) failed: {', '.join(failed)}; each line above names the cell")
