import os
import sys
from pathlib import Path

import pytest

from helpers.course import runner

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("COURSE_OUTPUTS", str(ROOT / "outputs" / "test-run"))

# Notebooks 03-07 share the cached class images of the toy's "a photo of dog" (one folder per seed), so they
# must not run side by side; `make test` runs them one after another beside a second stream of everything else.
SHARED_CLASS_IMAGES = tuple(f"notebooks/{prefix}" for prefix in runner.SHARED_CLASS_IMAGES)
# Notebook 12 caches the toy flow model's class images, which no other notebook reads: it may run in either stream.
OWN_CLASS_IMAGES = ("notebooks/12_",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n 2 --dist loadgroup` (the Makefile's), two serial streams of about equal length: the
    DreamBooth notebooks, and the tests with the other notebooks. xdist's own ``xdist_group`` marks cannot
    do it under pytest 9 (the group never reaches the node id its scheduler reads), so the scheduler asks
    this rule instead."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class TwoStreams(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "dreambooth-notebooks" if nodeid.startswith(SHARED_CLASS_IMAGES) else "rest"

    return TwoStreams(config, log)


@pytest.fixture(scope="session")
def toy_pipe():
    from helpers.core.runtime import configure_cpu
    from helpers.diffusion.profiles import load_pipeline

    configure_cpu()
    return load_pipeline("toy")


@pytest.fixture(scope="session")
def toy_vae(toy_pipe):
    return toy_pipe.vae


@pytest.fixture(scope="session")
def judge():
    from helpers.diffusion.profiles import TOY_JUDGE
    from helpers.toy.judge import load_judge

    return load_judge(TOY_JUDGE)


@pytest.fixture
def killed_run(monkeypatch):
    """``run(trainer_cls, start, step)``: call ``start()`` with ``trainer_cls._step_loss`` raising
    KeyboardInterrupt at ``step`` (0-based), as a kill mid-training would, and expect it to stop there."""

    def run(trainer_cls, start, step: int) -> None:
        real = trainer_cls._step_loss

        def killed(self, at, micro):
            if at == step:
                raise KeyboardInterrupt
            return real(self, at, micro)

        monkeypatch.setattr(trainer_cls, "_step_loss", killed)
        try:
            with pytest.raises(KeyboardInterrupt):
                start()
        finally:
            monkeypatch.setattr(trainer_cls, "_step_loss", real)

    return run


@pytest.fixture
def run_tool():
    """Run `python -m helpers.<module> ARGS` as a learner would, offline."""
    import subprocess

    def run(module: str, *args: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        return subprocess.run(
            [sys.executable, "-m", f"helpers.{module}", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=600,
        )

    return run


@pytest.fixture
def one_line_error(capsys):
    """``one_line_error(main, argv)``: run a command's ``main(argv)`` in-process as ``run_main`` does, check
    that it exits with status 2 and a single ``error:`` line (no traceback, no argparse usage), return it."""
    from helpers.core.cli import run_main

    def run(main, argv: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run_main(lambda: main(argv))
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]

    return run


@pytest.fixture(scope="session")
def sd_folders(tmp_path_factory):
    """The SD 1.x-shaped pipeline of ``tests/sd_shaped.py`` in fp32, fp16 and as an fp16 variant only,
    with tiny DINO, CLIP and x4-upscaler folders beside it; built in seconds, never downloaded."""
    import sd_shaped

    return sd_shaped.build(tmp_path_factory.mktemp("sd-shaped"))


@pytest.fixture(scope="session")
def sd3_folders(tmp_path_factory):
    """The SD 3.5 Medium-shaped pipeline of ``tests/sd3_shaped.py`` (two CLIPs, T5, MMDiT-X, 16-channel
    VAE) in fp32 and saved in fp16; built in seconds, never downloaded."""
    import sd3_shaped

    return sd3_shaped.build(tmp_path_factory.mktemp("sd3-shaped"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A toy ControlNet conditioning dataset of 12 rows, written once per test module."""
    from helpers.control import dataset as control_data

    return control_data.write_dataset(tmp_path_factory.mktemp("control") / "data", count=12, progress=False)


def toy_flow_velocity(transformer):
    """The toy flow transformer's output on one fixed random input: two transformers that compute the same
    function (a trained one and the one reloaded from its files) give the same tensor."""
    import torch

    g = torch.Generator().manual_seed(0)
    x, text, pooled = (
        torch.randn(1, 8, 16, 16, generator=g),
        torch.randn(1, 24, 192, generator=g),
        torch.randn(1, 192, generator=g),
    )
    with torch.no_grad():
        return transformer(
            hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text, pooled_projections=pooled
        ).sample
