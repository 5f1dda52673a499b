"""The loop that every trainer of the course shares: accelerate, optimizer steps, checkpoints, resume.

DreamBooth (``helpers.dreambooth.trainer``) and ControlNet (``helpers.control.trainer``) differ in what they
train and how one batch's loss is computed, not in how training is run. This module holds the
part they share, written once:

- accelerate's ``Accelerator`` (the same code on a CPU, one GPU, or ``accelerate launch`` /
  ``torchrun`` data parallel), gradient accumulation and clipping;
- atomic checkpoints (a kill during a save leaves the previous one usable) that behave as diffusers'
  scripts' do: one every ``checkpointing_steps`` including the last step, ``checkpoints_total_limit``
  pruning, ``--resume_from_checkpoint checkpoint-N`` (a folder under ``output_dir``) or ``latest``,
  and each trained model saved in its own ``from_pretrained`` folder (``checkpoint-N/unet``);
- resume mistakes as one line each: a new run in a folder that holds checkpoints, a checkpoint
  beyond ``max_train_steps``, a damaged checkpoint file (named, with the checkpoint to go back to);
- a loss history that survives a resume, read from the device once per logging interval, and sent
  to the ``--report_to`` trackers (``helpers.training.trackers``) with the learning rate; a loss
  that turns NaN or infinite stops the run there, before any checkpoint holds the broken weights;
- a progress bar.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError
from helpers.training import trackers
from helpers.training.optim import make_optimizer, optimizer_state_bytes
from helpers.training.settings import LoopSettings, TrainerResult, TrainerSettings, public_settings

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
HISTORY = "loss_history.json"

# step_loss(step, micro) -> (loss to backpropagate, named parts to log)
StepLoss = Callable[[int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class TrainingDiverged(UsageError):
    """The loss turned NaN or infinite: the run stops at that step, so that no checkpoint or model holds
    the broken weights, and the message names the checkpoint to resume with a lower learning rate."""


@dataclass
class Hooks:
    """What a trainer adds to the shared loop, each at one moment of a run."""

    name: str = "training"  # the progress bar's label, and the trackers' project
    on_prepared: Callable[[list[torch.nn.Module]], None] | None = None  # gets the prepared models, first of all
    before_loop: Callable[[int], None] | None = None  # gets the step it starts from, just before the first
    after_step: Callable[[int], None] | None = None  # gets the steps done, after each optimizer step


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of the frozen parts for ``--mixed_precision`` (half precision on a GPU halves their memory)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_lr_scheduler(settings: TrainerSettings, optimizer, accelerator):
    """diffusers' get_scheduler, counted in optimizer steps of all processes, as its scripts do."""
    from diffusers.optimization import get_scheduler

    n = accelerator.num_processes
    return get_scheduler(
        settings.lr_scheduler,
        optimizer,
        num_warmup_steps=settings.lr_warmup_steps * n,
        num_training_steps=settings.max_train_steps * n,
    )


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The generator of one micro-batch: every random draw depends only on (seed, step, micro, rank),
    so a run resumed from a checkpoint continues exactly as if it had never stopped."""
    return torch.Generator().manual_seed((((seed * 1_000_003 + step) * 97 + micro) * 1009 + rank) % (2**63 - 1))


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or the velocity for v-prediction models."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def make_accelerator(output_dir: Path, gradient_accumulation_steps: int, mixed_precision: str, report_to: str = "none"):
    """An Accelerator for one run. accelerate keeps its settings in a process-wide singleton that refuses
    a second mixed precision ("AcceleratorState has already been initialized"), which a learner meets
    on re-running a notebook cell with another precision; the run's own settings are put in place
    instead (the distributed state, set up by the launcher, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    if AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()

    # cpu=True is what makes accelerate pick MULTI_CPU (gloo) under torchrun on a machine without CUDA
    return Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        cpu=not torch.cuda.is_available(),
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(trackers.logging_dir(output_dir))
        ),
        log_with=trackers.log_with(report_to),
    )


def finish(accelerator) -> None:
    """End a run so that its models can go: trackers closed, and accelerate's own references to the
    prepared models and optimizer dropped (it keeps them in lists, and a LoRA run's save hooks tie the
    accelerator into a cycle that only the garbage collector would break)."""
    accelerator.end_training()
    accelerator.free_memory()


# --------------------------------------------------------------------------- checkpoints


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a ``.tmp`` folder left by a kill is not one)."""
    found = [
        (int(m.group(1)), p)
        for p in Path(output_dir).glob("checkpoint-*")
        if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def step_of(checkpoint: Path) -> int:
    """The step a ``checkpoint-N`` folder was saved at."""
    return int(CHECKPOINT.fullmatch(checkpoint.name).group(1))


def resolve_resume(output_dir: Path, resume: str | None, max_train_steps: int | None = None) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint`` names: ``latest`` (None when there is none yet), or
    ``checkpoint-N``, a folder under ``output_dir`` as in diffusers' scripts (a path to it works too).

    Trainers call it before loading anything, so these mistakes cost no time: a new run (``resume``
    None) in a folder that holds checkpoints is refused, because that run's checkpoints would mix with
    this one's (the total limit would prune the new ones, ``latest`` would pick the old); and, when
    ``max_train_steps`` is given, a checkpoint beyond it, which would leave nothing to train.
    """
    found = checkpoints(output_dir)
    if resume is None:
        if found:
            raise UsageError(
                f"--output_dir {output_dir} holds the checkpoints of an earlier run (up to {found[-1].name}): "
                "continue it with --resume_from_checkpoint latest, or pass another --output_dir"
            )
        return None
    path = (found[-1] if found else None) if resume == "latest" else _named_checkpoint(output_dir, resume, found)
    if path is not None and max_train_steps is not None:
        check_within(path, max_train_steps)
    return path


def _named_checkpoint(output_dir: Path, resume: str, found: list[Path]) -> Path:
    """The ``checkpoint-N`` folder that ``--resume_from_checkpoint`` names, which must be in ``output_dir``."""
    path = Path(output_dir) / Path(resume).name
    if not CHECKPOINT.fullmatch(path.name):
        raise UsageError(f"--resume_from_checkpoint {resume!r} is not a checkpoint-N folder; pass one or 'latest'")
    if Path(resume).parent != Path(".") and Path(resume).resolve() != path.resolve():
        raise UsageError(
            f"--resume_from_checkpoint {resume} is not in --output_dir {output_dir}: a run resumes from its own "
            "checkpoints, so pass that folder as --output_dir"
        )
    if not path.is_dir():
        have = ", ".join(p.name for p in found) or "none"
        raise UsageError(f"--resume_from_checkpoint {resume}: no such checkpoint in {output_dir} (it has {have})")
    return path


def check_within(checkpoint: Path, max_train_steps: int) -> None:
    """Refuse to resume from a checkpoint past ``max_train_steps``: the loop would run no step and report
    a negative speed, and the model saved would be the checkpoint's, not one of ``max_train_steps``."""
    step = step_of(checkpoint)
    if step <= max_train_steps:
        return
    earlier = [p.name for p in checkpoints(checkpoint.parent) if step_of(p) <= max_train_steps]
    instead = f"resume from {earlier[-1]}" if earlier else "start again in a new --output_dir"
    raise UsageError(
        f"{checkpoint.name} is beyond --max_train_steps {max_train_steps}: pass --max_train_steps {step} or more "
        f"to train on from it, or {instead}"
    )


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: int | None) -> Path:
    """accelerator.save_state into a temporary folder, renamed when complete; old ones pruned after.

    Pruning counts only checkpoints up to ``step``: a run resumed from an earlier checkpoint may find
    later ones of the branch it abandoned, and counting those (they sort after the new one) would delete
    the checkpoint just written and keep a stale one. They stay until this run saves over them."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    write_text_atomic(tmp / "step.json", json.dumps({"step": step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if limit is not None:
        for old in [p for p in checkpoints(output_dir) if step_of(p) <= step][:-limit]:
            shutil.rmtree(old)
    return final


def pretrained_checkpoints(accelerator, models: dict[str, torch.nn.Module]) -> None:
    """Make ``save_state``/``load_state`` keep each trained model as a ``save_pretrained`` folder named
    by its key (``checkpoint-N/unet``), as the save and load hooks of diffusers' scripts do: a
    checkpoint is then a model a learner can load and sample (``UNet2DConditionModel.from_pretrained(
    out, subfolder="checkpoint-400/unet")``), and the weights carry no data-parallel ``module.`` prefix."""

    names = {id(m): name for name, m in models.items()}  # ids, not the models: the hooks outlive the run

    def name_of(model: torch.nn.Module) -> str:
        return names[id(accelerator.unwrap_model(model))]

    def save(prepared: list, weights: list, output_dir: str) -> None:
        for model in prepared:
            accelerator.unwrap_model(model).save_pretrained(Path(output_dir) / name_of(model), safe_serialization=True)
        weights.clear()  # nothing else for accelerate to write

    def load(prepared: list, input_dir: str) -> None:
        while prepared:
            model = accelerator.unwrap_model(prepared.pop())
            saved = type(model).from_pretrained(input_dir, subfolder=name_of(model))
            model.load_state_dict(saved.state_dict())
            del saved

    accelerator.register_save_state_pre_hook(save)
    accelerator.register_load_state_pre_hook(load)


def resume(
    accelerator, output_dir: Path, resume_from_checkpoint: str | None, max_train_steps: int | None = None
) -> int:
    """Load the asked-for checkpoint into the prepared objects; the step to go on from (0: a new run)."""
    found = resolve_resume(output_dir, resume_from_checkpoint, max_train_steps)
    if found is None:
        if resume_from_checkpoint and accelerator.is_main_process:
            print(f"no checkpoint in {output_dir}; starting a new run")
        return 0
    load_checkpoint(accelerator, found)
    return step_of(found)


def load_checkpoint(accelerator, checkpoint: Path) -> None:
    """``accelerator.load_state`` (and the pre-hooks that load ``checkpoint-N/unet``), with a failure as
    one line: a truncated file (a full disk, an interrupted copy from Drive) is named, with the checkpoint
    to resume instead. The hooks' own one-line answers (a LoRA rank that does not fit) pass unchanged."""
    try:
        accelerator.load_state(str(checkpoint))
    except UsageError:
        raise
    except Exception as err:
        broken = damaged_file(checkpoint)
        earlier = [p.name for p in checkpoints(checkpoint.parent) if step_of(p) < step_of(checkpoint)]
        instead = (
            f"resume from {earlier[-1]} instead (--resume_from_checkpoint {earlier[-1]})"
            if earlier
            else "there is none before it: start again in a new --output_dir"
        )
        what = broken or f"it does not load ({_first_line(err)})"
        raise UsageError(f"cannot resume from {checkpoint}: {what}; {instead}") from (None if broken else err)


def damaged_file(checkpoint: Path) -> str | None:
    """The first file of ``checkpoint`` that does not read whole, and why; None when all do.

    Tensors are read as their loaders read them, and pickles only with ``weights_only=True``. accelerate's
    ``random_states_*.pkl`` are left out: accelerate 1.15 loads them itself (``weights_only=True`` with
    its allow-list of numpy types, which a plain ``torch.load`` refuses) and only logs a failure, so they
    never make ``load_state`` fail."""
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        try:
            _read_whole(path)
        except Exception as err:
            return f"{path.relative_to(checkpoint)} is damaged ({_first_line(err)})"
    return None


def _read_whole(path: Path) -> None:
    """Read one checkpoint file to its end; it raises whatever its loader would on a damaged file."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix in (".bin", ".pt", ".pth", ".pkl") and not path.name.startswith("random_states_"):
        torch.load(path, map_location="cpu", weights_only=True)


def _first_line(err: Exception) -> str:
    """An exception as a short phrase for a one-line message: its first sentence (torch adds a paragraph)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].split('. ')[0]}" if text else type(err).__name__


def load_history(output_dir: Path, start_step: int, name: str = HISTORY) -> list[dict]:
    """Entries logged up to ``start_step`` by the run being resumed (none for a new run)."""
    path = output_dir / name
    if start_step and path.exists():
        return [h for h in json.loads(path.read_text()) if h["step"] <= start_step]
    return []


# --------------------------------------------------------------------------- the loop


def run_loop(
    accelerator,
    output_dir: Path,
    trained: Sequence[torch.nn.Module],
    optimizer,
    lr_scheduler,
    step_loss: StepLoss,
    settings: LoopSettings,
    start_step: int = 0,
    hooks: Hooks | None = None,
) -> tuple[list[dict], float]:
    """Train from ``start_step`` to ``settings.max_train_steps``; returns the loss history and the seconds spent.

    ``hooks.after_step(done)`` runs on every process after each optimizer step (validation, sampling);
    a checkpoint is saved every ``checkpointing_steps``, the last step included (so that a run can be
    looked at and continued from there), and the history written beside it. A loss that is not finite
    raises ``TrainingDiverged`` where the losses are read, which is always before a checkpoint.
    """
    acc, s, hooks = accelerator, settings, hooks or Hooks()
    if start_step:
        check_within(output_dir / f"checkpoint-{start_step}", s.max_train_steps)
    last_good = start_step or None  # the newest checkpoint of this run: the one to go back to
    history = load_history(output_dir, start_step)
    if acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(
        range(start_step, s.max_train_steps),
        initial=start_step,
        total=s.max_train_steps,
        desc=hooks.name,
        disable=not (s.progress and acc.is_local_main_process),
    )
    pending: list[tuple[torch.Tensor, dict[str, torch.Tensor], float]] = []
    t0 = time.perf_counter()
    for step in bar:
        total, parts = None, {}
        for micro in range(s.gradient_accumulation_steps):
            with acc.accumulate(*trained):
                loss, named = step_loss(step, micro)
                total = loss.detach() if total is None else total + loss.detach()
                parts = {k: v.detach() + parts.get(k, 0) for k, v in named.items()}
                acc.backward(loss)
                if acc.sync_gradients and s.max_grad_norm:
                    acc.clip_grad_norm_(params, s.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        pending.append(
            (
                total / s.gradient_accumulation_steps,
                {k: v / s.gradient_accumulation_steps for k, v in parts.items()},
                lr_scheduler.get_last_lr()[0],
            )
        )
        done = step + 1
        checkpoint_now = bool(s.checkpointing_steps) and done % s.checkpointing_steps == 0
        if done % s.logging_steps == 0 or done == s.max_train_steps or checkpoint_now:
            check_finite(acc, [loss for loss, _, _ in pending], done - len(pending) + 1, last_good)
            for k, (loss, named, lr) in enumerate(pending):  # the only host sync: once per log interval
                entry = {"loss": loss.item()} | {name: v.item() for name, v in named.items()} | {"lr": lr}
                history.append({"step": done - len(pending) + k + 1} | entry)
                acc.log(entry, step=history[-1]["step"])
            # one step's loss jumps with its random timesteps: the bar shows the interval's mean, and says so
            interval = [h["loss"] for h in history[-len(pending) :]]
            bar.set_postfix({f"loss (mean of {len(interval)} steps)": f"{sum(interval) / len(interval):.4f}"})
            pending.clear()
        if hooks.after_step is not None:
            hooks.after_step(done)
        if checkpoint_now:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(acc, output_dir, done, s.checkpoints_total_limit)
                write_text_atomic(output_dir / HISTORY, json.dumps(history))
            last_good = done
    seconds = time.perf_counter() - t0
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_text_atomic(output_dir / HISTORY, json.dumps(history))
    return history, seconds


def check_finite(accelerator, losses: list[torch.Tensor], first_step: int, last_good: int | None) -> None:
    """Raise ``TrainingDiverged`` at the first of ``losses`` (those of steps ``first_step``, ``first_step``
    + 1, ...) that is NaN or infinite on any process. It runs where the loop reads the losses anyway, once
    per logging interval, so it adds no host sync per step; every process gets the same answer, so all
    stop together instead of one waiting for the others at the next checkpoint."""
    every = accelerator.gather(torch.stack(losses)[None]).float().cpu()  # (processes, steps)
    bad = (~torch.isfinite(every)).any(dim=0).nonzero()
    if not len(bad):
        return
    k = int(bad[0])
    value = next(v for v in every[:, k].tolist() if not math.isfinite(v))
    back = (
        f"resume from the last good checkpoint with --resume_from_checkpoint checkpoint-{last_good}"
        if last_good
        else "start again (no checkpoint was saved before it)"
    )
    raise TrainingDiverged(
        f"the loss turned {value} at step {first_step + k}: training diverged and stopped with no checkpoint or "
        f"model saved after it; lower --learning_rate and {back}"
    )


# --------------------------------------------------------------------------- a whole run


def fit(
    accelerator,
    settings: TrainerSettings,
    output_dir: Path,
    trained: Sequence[torch.nn.Module],
    groups: list[dict],
    step_loss: StepLoss,
    hooks: Hooks,
) -> dict:
    """The sequence both trainers run: optimizer and learning-rate schedule from the settings,
    ``accelerate.prepare``, resume, the loop, peak memory. Returns the fields of a ``TrainerResult``.

    ``hooks.on_prepared(models)`` receives the prepared models, in the order of ``trained``, before anything
    else runs: ``step_loss`` must call those (under data parallel they are the wrappers that sync
    gradients), and a LoRA run installs its adapters-only checkpoint hooks there.
    ``hooks.before_loop(start_step)`` runs just before the first step (ControlNet's step-0 validation).
    With ``--scale_lr`` every group's learning rate is multiplied by the samples of one optimizer step.
    A resumed run trains at its own ``--learning_rate``, not the checkpoint's (``keep_learning_rates``).

    The result's ``steps`` are the model's steps in all (what the model cards show), and
    ``steps_per_second`` counts those this call ran (none, on resuming the last checkpoint).
    """
    scale = settings.learning_rate_scale(accelerator.num_processes)
    groups = [group | {"lr": group["lr"] * scale} for group in groups]
    optimizer = make_optimizer(
        groups,
        settings.learning_rate * scale,
        settings.use_8bit_adam,
        settings.allow_adamw_fallback,
        weight_decay=settings.adam_weight_decay,
        device=accelerator.device,
    )
    lr_scheduler = make_lr_scheduler(settings, optimizer, accelerator)
    *models, optimizer, lr_scheduler = accelerator.prepare(*trained, optimizer, lr_scheduler)
    if hooks.on_prepared is not None:
        hooks.on_prepared(models)
    wanted = list(lr_scheduler.scheduler.base_lrs)  # this run's, before a checkpoint brings back its own
    start_step = resume(accelerator, output_dir, settings.resume_from_checkpoint, settings.max_train_steps)
    keep_learning_rates(optimizer, lr_scheduler, wanted)
    trackers.start(accelerator, hooks.name, public_settings(settings))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if hooks.before_loop is not None:
        hooks.before_loop(start_step)
    for model in models:
        model.train()
    history, seconds = run_loop(
        accelerator,
        output_dir,
        models,
        optimizer,
        lr_scheduler,
        step_loss,
        settings,
        start_step,
        hooks,
    )
    ran = settings.max_train_steps - start_step
    return dict(
        output_dir=str(output_dir),
        steps=settings.max_train_steps,
        seconds=seconds,
        steps_per_second=ran / seconds if seconds else 0.0,
        history=history,
        optimizer_state_bytes=optimizer_state_bytes(optimizer),
        trainable_parameters=sum(p.numel() for g in groups for p in g["params"]),
        peak_memory_bytes=torch.cuda.max_memory_allocated() if cuda else None,
    )


def keep_learning_rates(optimizer, lr_scheduler, base_lrs: list[float]) -> None:
    """Put ``base_lrs`` back in place of the learning rates a checkpoint restored, at the same point of
    the schedule. ``load_state`` brings back the optimizer's and the schedule's rates as the run that
    saved them had them, so "lower --learning_rate and resume" would otherwise change nothing. Rates
    that did not change are left alone, so that a plain resume goes on bit for bit."""
    scheduler = lr_scheduler.scheduler
    for i, (group, new) in enumerate(zip(optimizer.param_groups, base_lrs)):
        old = scheduler.base_lrs[i]
        if new != old:
            group["lr"] = group["lr"] * new / old  # diffusers' schedules multiply the base rate by a factor
            group["initial_lr"] = scheduler.base_lrs[i] = new


def write_result(output_dir: Path, result: TrainerResult, settings: TrainerSettings) -> None:
    """``train_result.json``: the result without its loss history (``loss_history.json`` has it), and the settings."""
    write_text_atomic(
        output_dir / "train_result.json",
        json.dumps(
            {k: v for k, v in asdict(result).items() if k != "history"} | {"config": public_settings(settings)},
            indent=2,
        ),
    )
