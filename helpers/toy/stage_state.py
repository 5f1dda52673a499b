"""A pretraining stage's progress on disk, so that a stage killed part way goes on where it stopped.

The toy model's pretraining runs for hours on a 2-core CPU, in stages of at most an hour. Each
stage saves its models, optimizer, learning-rate schedule, random-number generators, step and
elapsed time every few minutes, atomically (a kill during a save leaves the previous state usable).
Run the same command again and it continues from that state; because the batches are a function of
the step and the generators are restored, the result is the one an uninterrupted run gives. A state
written by a different command is refused rather than silently mixed in.
"""

from __future__ import annotations

import pickle
import random
import time
from pathlib import Path
from typing import Any

import torch

from helpers.core.atomic import save_torch_atomic
from helpers.core.errors import UsageError, first_line

STATE = "state.pt"


def load_tensors(path: Path) -> Any:
    """``torch.load`` of a file this course wrote: tensors, numbers, text and containers of them.

    ``weights_only=True`` refuses any other pickled object, because unpickling one runs whatever code
    it names (and torch before 2.6 unpickles anything by default). A file the loader refuses, or
    cannot read, was not written whole by the course: one line, and it stays on disk untouched.
    """
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(
            f"{path} holds objects other than tensors, numbers and text, so it was not written by this course "
            f"and is not loaded (unpickling them could run any code): delete it to start again"
        ) from None
    except (RuntimeError, EOFError) as err:
        reason = first_line(err, 120)
        raise UsageError(f"{path} cannot be read ({reason}): delete it to start again") from None


class StageState:
    """Save and restore ``objects`` (anything with ``state_dict``/``load_state_dict``) in ``folder``.

    ``settings`` identifies the run (steps, batch size, seed, learning rate...): a saved state with
    other settings belongs to another run, and resuming it would train a model no command describes.
    """

    def __init__(
        self,
        folder: Path,
        settings: dict,
        objects: dict[str, Any],
        rng: random.Random | None = None,
        every_seconds: float = 300.0,
        started: float | None = None,
    ) -> None:
        self.path = Path(folder) / STATE
        self.settings, self.objects, self.rng = settings, objects, rng
        self.every_seconds = every_seconds
        self.step, self.elapsed = 0, 0.0
        self._since = time.time() if started is None else started  # this process's share of the wall time
        self._last_save = time.time()

    def resume(self) -> int:
        """Load a saved state if there is one; the step to continue from (0 for a new run)."""
        if not self.path.exists():
            return 0
        saved = load_tensors(self.path)
        if saved["settings"] != self.settings:
            raise UsageError(
                f"{self.path} was written by a run with other settings ({saved['settings']}); "
                f"delete it to start again, or rerun that run's command to finish it"
            )
        for name, obj in self.objects.items():
            obj.load_state_dict(saved["objects"][name])
        torch.set_rng_state(saved["torch_rng"])
        if self.rng is not None:
            self.rng.setstate(saved["python_rng"])
        self.step, self.elapsed = saved["step"], saved["elapsed"]
        print(f"resuming {self.path.parent.name} from step {self.step} ({self.elapsed:.0f} s done)", flush=True)
        return self.step

    def seconds(self) -> float:
        """Wall time of the whole stage so far, every resumed piece included."""
        return self.elapsed + time.time() - self._since

    def after_step(self, step: int) -> None:
        """Call after each finished step: saves when ``every_seconds`` have passed since the last save."""
        self.step = step
        if time.time() - self._last_save >= self.every_seconds:
            self.save()

    def save(self) -> None:
        state = {
            "settings": self.settings,
            "step": self.step,
            "elapsed": self.seconds(),
            "objects": {name: obj.state_dict() for name, obj in self.objects.items()},
            "torch_rng": torch.get_rng_state(),
            "python_rng": self.rng.getstate() if self.rng is not None else None,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_torch_atomic(state, self.path)
        self._last_save = time.time()

    def clear(self) -> None:
        """The stage is finished and its result saved: the state is no longer needed."""
        self.path.unlink(missing_ok=True)
