"""`python -m helpers.generate`: numbers that cannot work are one line, the output folder is checked
before the model loads, each batch is written as it is drawn, and a re-run does not mix two runs."""

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from helpers.core.folders import MARK
from helpers.core.paths import DATA
from helpers.diffusion import generate


class FakePipe:
    """A pipeline that draws one flat 8 px image per generator (its seed as the grey level), and is
    interrupted (KeyboardInterrupt, as a Ctrl-C) at call number ``stop``."""

    device = torch.device("cpu")
    scheduler = DDIMScheduler()

    def __init__(self, stop: int | None = None) -> None:
        self.calls, self.stop, self.guidance = 0, stop, []

    def __call__(self, prompts, generator, guidance_scale, **kwargs):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        self.guidance.append(guidance_scale)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8), (g.initial_seed() % 256,) * 3) for g in generator])


@pytest.fixture
def fake_pipe(monkeypatch):
    """``fake_pipe(stop=None)``: the pipeline `generate` loads from now on."""

    def use(stop: int | None = None) -> FakePipe:
        pipe = FakePipe(stop)
        monkeypatch.setattr(generate, "load_pipeline", lambda *args, **kwargs: pipe)
        return pipe

    return use


def _argv(out, *flags: str) -> list[str]:
    return ["--model", "toy", "--prompt", "a photo of a red dog", "--output_dir", str(out), *flags]


def _made(out) -> list[str]:
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_inference_steps", "-3"),
        ("num_inference_steps", "0"),
        ("guidance_scale", "nan"),
        ("guidance_scale", "inf"),
        ("guidance_scale", "-1"),
        ("num_images", "0"),
        ("batch_size", "0"),
        ("seed", "-1"),
    ],
)
def test_a_number_that_cannot_work_is_one_line_before_the_model_loads(
    name, value, tmp_path, monkeypatch, one_line_error
):
    def fail(*args, **kwargs):
        raise AssertionError("the model loaded before the numbers were checked")

    monkeypatch.setattr(generate, "load_pipeline", fail)
    line = one_line_error(generate.main, _argv(tmp_path / "out", f"--{name}={value}"))
    shown = str(int(value)) if value.lstrip("-").isdigit() else str(float(value))
    assert f"--{name}" in line and f"got {shown}" in line
    assert not (tmp_path / "out").exists()


def test_a_guidance_scale_of_1_or_less_draws_without_guidance_as_diffusers_does(tmp_path, fake_pipe):
    pipe = fake_pipe()
    generate.main(_argv(tmp_path / "out", "--num_images", "1", "--guidance_scale", "0"))
    assert pipe.guidance == [0.0]


def test_each_batch_is_written_as_it_is_drawn_so_an_interrupt_keeps_it(tmp_path, fake_pipe):
    fake_pipe(stop=2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate.main(_argv(out, "--num_images", "6", "--batch_size", "2"))
    assert _made(out) == [MARK, "00000.png", "00001.png", "generation.json"]
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["files"] == ["00000.png", "00001.png"] and manifest["complete"] is False
    assert Image.open(out / "00001.png").getpixel((0, 0)) == (1, 1, 1)  # image i from seed + i


def test_a_rerun_replaces_only_the_images_the_earlier_run_listed(tmp_path, fake_pipe):
    fake_pipe()
    out = tmp_path / "out"
    generate.main(_argv(out, "--num_images", "3", "--seed", "10"))
    (out / "notes.txt").write_text("mine")
    (out / "00007.png").write_bytes(b"not generate's")
    generate.main(_argv(out, "--num_images", "1"))
    assert _made(out) == [MARK, "00000.png", "00007.png", "generation.json", "notes.txt"]
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["files"] == ["00000.png"] and manifest["complete"] is True and manifest["num_images"] == 1
    assert Image.open(out / "00000.png").getpixel((0, 0)) == (0, 0, 0)  # this run's, from seed 0


def test_a_folder_generate_did_not_make_is_refused_before_the_model_loads(tmp_path, monkeypatch, one_line_error):
    monkeypatch.setattr(generate, "load_pipeline", lambda *a, **k: pytest.fail("the model loaded"))
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "00000.png").write_bytes(b"my photo")
    line = one_line_error(generate.main, _argv(mine))
    assert "did not make (00000.png)" in line and "nothing was changed" in line
    assert _made(mine) == ["00000.png"] and (mine / "00000.png").read_bytes() == b"my photo"
    line = one_line_error(generate.main, _argv(DATA / "generated"))
    assert "inside the course's data/ folder" in line


def test_generate_images_is_the_batches_one_after_the_other():
    batches = list(generate.iter_batches(FakePipe(), "a dog", 5, seed=3, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    images = generate.generate_images(FakePipe(), "a dog", 5, seed=3, batch_size=2)
    assert [i.getpixel((0, 0))[0] for i in images] == [3, 4, 5, 6, 7]


def _shaped(sample_size: int, scale: int, denoiser: str = "unet") -> SimpleNamespace:
    return SimpleNamespace(
        **{denoiser: SimpleNamespace(config=SimpleNamespace(sample_size=sample_size))}, vae_scale_factor=scale
    )


def test_the_default_batch_holds_as_many_images_as_fit_sd_1x_batch_of_8():
    assert generate.default_batch_size(_shaped(64, 8)) == 8  # SD 1.x at 512 px: diffusers' examples' 8
    assert generate.default_batch_size(_shaped(64, 8), resolution=1024) == 2
    assert generate.default_batch_size(_shaped(64, 8), resolution=8000) == 1
    assert generate.default_batch_size(_shaped(16, 4)) == generate.MAX_BATCH  # the toy's 16 x 16 latents
    assert generate.default_batch_size(_shaped(16, 4, "transformer")) == generate.MAX_BATCH  # the toy flow model
    assert generate.default_batch_size(SimpleNamespace()) == generate.UNKNOWN_BATCH  # no latent size to read
    pipe = FakePipe()
    pipe.unet, pipe.vae_scale_factor = SimpleNamespace(config=SimpleNamespace(sample_size=32)), 8
    assert [len(b) for b in generate.iter_batches(pipe, "a dog", 40)] == [32, 8]
