"""Each command that writes a folder, pointed at the wrong one as a learner would: it is refused in one
line before any work and the files there stay as they were; its own folder is replaced on a second run."""

import errno
import json
from collections.abc import Callable

import pytest
from PIL import Image

from helpers.control import controlgpt
from helpers.control import dataset as control_data
from helpers.core.cli import run_main
from helpers.core.folders import MARK, made_by, mark
from helpers.core.paths import DATA
from helpers.toy import judge as judge_mod
from helpers.toy import locator, pretrain
from helpers.upscaler import cli as upscaler_cli


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(main: Callable, *argv: str) -> int:
    """Run a command's ``main`` as ``python -m`` does (through ``run_main``): its exit status."""
    try:
        run_main(lambda: main(list(argv)))
    except SystemExit as exited:
        return exited.code
    return 0


def _refused(capsys, main: Callable, *argv: str, says: tuple[str, ...] = ()) -> str:
    """Run the command, expect exit status 2 and one ``error:`` line saying ``says``; that line."""
    status, err = _run(main, *argv), capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in says:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _forbid(monkeypatch, owner, *names: str) -> None:
    """Make ``owner.<name>`` fail the test: the work it stands for must not start before the checks."""

    def started(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    for name in names:
        monkeypatch.setattr(owner, name, started)


@pytest.fixture
def own(tmp_path):
    """The learner's own files: a photo and their notes, in a folder no command made."""
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "photo.png")
    (folder / "notes.txt").write_text("my notes\n")
    return folder


@pytest.fixture
def elsewhere(tmp_path):
    """A folder another course command made (a generation's images)."""
    folder = tmp_path / "generated"
    folder.mkdir()
    (folder / "00000.png").write_bytes(b"an image")
    mark(folder, "helpers.generate")
    return folder


DID_NOT_MAKE = ("did not make (notes.txt, photo.png)", "nothing was changed")
IN_DATA = ("inside the course's data/ folder",)


# --------------------------------------------------------------------------- python -m helpers.control_data


@pytest.fixture
def no_rendering(monkeypatch):
    _forbid(monkeypatch, control_data, "make_row")


def test_control_data_refuses_the_learners_folder(own, capsys, no_rendering):
    before = _files(own)
    _refused(capsys, control_data.main, "--output", str(own), "--count", "2", says=("--output", *DID_NOT_MAKE))
    assert _files(own) == before and sorted(p.name for p in own.parent.iterdir()) == ["mine"]


def test_control_data_output_dot_keeps_the_working_folder_and_its_git(tmp_path, monkeypatch, capsys, no_rendering):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "README.md").write_text("my project\n")
    before = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    _refused(capsys, control_data.main, "--output", ".", "--count", "2", says=("--output . already holds", ".git"))
    assert _files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [".git", "README.md"]


def test_control_data_refuses_data_and_another_commands_folder(elsewhere, capsys, no_rendering):
    _refused(capsys, control_data.main, "--output", str(DATA / "my-control-data"), "--count", "2", says=IN_DATA)
    assert not (DATA / "my-control-data").exists()
    before = _files(elsewhere)
    _refused(capsys, control_data.main, "--output", str(elsewhere), says=("made by python -m helpers.generate",))
    assert _files(elsewhere) == before


def test_control_data_replaces_its_own_folder_and_a_full_disk_leaves_it_whole(tmp_path, monkeypatch, capsys):
    out = tmp_path / "control"
    assert _run(control_data.main, "--output", str(out), "--count", "2", "--seed", "0") == 0
    assert _run(control_data.main, "--output", str(out), "--count", "1", "--seed", "5") == 0
    assert made_by(out) == control_data.TOOL
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.png"]  # the first run's rows are gone
    assert json.loads((out / control_data.DESCRIPTION).read_text())["seed"] == 5
    before = _files(out)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    _refused(capsys, control_data.main, "--output", str(out), "--count", "2", says=("the disk filled up",))
    assert _files(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["control"]


# --------------------------------------------------------------------------- python -m helpers.controlgpt draw


def _draw(output, *more: str) -> tuple:
    return (controlgpt.main, "draw", "--prompt", "a red dog above a blue cup", "--output_dir", str(output), *more)


def test_controlgpt_draw_refuses_the_learners_folder_before_planning(own, monkeypatch, capsys):
    _forbid(monkeypatch, controlgpt, "planned_sketch", "load_controlnet_pipeline")
    before = _files(own)
    _refused(capsys, *_draw(own), says=("--output_dir", *DID_NOT_MAKE))
    assert _files(own) == before


def test_controlgpt_draw_refuses_data_and_another_commands_folder(elsewhere, monkeypatch, capsys):
    _forbid(monkeypatch, controlgpt, "planned_sketch", "load_controlnet_pipeline")
    _refused(capsys, *_draw(DATA / "toy-controlnet"), says=IN_DATA)
    before = _files(elsewhere)
    _refused(capsys, *_draw(elsewhere), says=("made by python -m helpers.generate",))
    assert _files(elsewhere) == before


def test_controlgpt_draw_replaces_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(controlgpt, "load_controlnet_pipeline", lambda path: None)  # the folder is tested, not drawing
    monkeypatch.setattr(controlgpt, "draw", lambda pipe, prompts, sketches, seed, **kw: [Image.new("RGB", (64, 64))])
    out = tmp_path / "drawn"
    assert _run(*_draw(out)) == 0
    (out / "000.tex").write_text("stale")
    assert _run(*_draw(out, "--seed", "1")) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARK, "000-sketch.png", "000.png", "000.tex"]
    assert (out / "000.tex").read_text() != "stale" and made_by(out) == controlgpt.TOOL


# --------------------------------------------------------------------------- python -m helpers.upscaler


@pytest.fixture
def no_upscaling(monkeypatch):
    _forbid(monkeypatch, upscaler_cli, "load_image_folder", "load_upscaler", "build_upscaler", "pretrain", "finetune")


@pytest.fixture
def low(tmp_path):
    """Two 64 px images to upscale."""
    folder = tmp_path / "low"
    folder.mkdir()
    for k in range(2):
        Image.new("RGB", (64, 64), (40 * k, 90, 200)).save(folder / f"{k}.png")
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["upscale", "--images", "LOW", "--output_dir", "OWN"],
        ["finetune", "--instance_data_dir", "LOW", "--output_dir", "OWN"],
        ["pretrain", "--output", "OWN"],
    ],
)
def test_upscaler_refuses_the_learners_folder(own, low, command, capsys, no_upscaling):
    argv = [{"OWN": str(own), "LOW": str(low)}.get(a, a) for a in command]
    before = _files(own)
    _refused(capsys, upscaler_cli.main, *argv, says=DID_NOT_MAKE)
    assert _files(own) == before


@pytest.mark.parametrize(
    "command, says",
    [
        (["upscale", "--images", "LOW", "--output_dir", "LOW"], "--output_dir LOW is --images LOW"),
        (["upscale", "--images", "LOW", "--output_dir", "LOW/big"], "--output_dir LOW/big is inside --images LOW"),
        (
            ["finetune", "--instance_data_dir", "LOW", "--output_dir", "LOW"],
            "--output_dir LOW is --instance_data_dir LOW",
        ),
        (
            ["finetune", "--instance_data_dir", "LOW", "--output_dir", "LOW/model"],
            "--output_dir LOW/model is inside --instance_data_dir LOW",
        ),
    ],
)
def test_upscaler_refuses_an_output_in_its_input_folder(low, command, says, capsys, no_upscaling):
    before = _files(low)
    _refused(
        capsys, upscaler_cli.main, *[a.replace("LOW", str(low)) for a in command], says=(says.replace("LOW", str(low)),)
    )
    assert _files(low) == before and sorted(p.name for p in low.iterdir()) == ["0.png", "1.png"]


@pytest.mark.parametrize(
    "command",
    [
        ["upscale", "--images", "LOW", "--output_dir", str(DATA / "upscaled")],
        ["finetune", "--instance_data_dir", "LOW", "--output_dir", str(DATA / "toy-upscaler")],
    ],
)
def test_upscale_and_finetune_refuse_the_course_data(low, command, capsys, no_upscaling):
    _refused(capsys, upscaler_cli.main, *[a.replace("LOW", str(low)) for a in command], says=IN_DATA)
    assert not (DATA / "upscaled").exists()


def test_upscale_and_the_models_never_replace_each_others_folders(tmp_path, low, elsewhere, capsys, no_upscaling):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    mark(model, upscaler_cli.TOOL)
    said = _refused(capsys, upscaler_cli.main, "upscale", "--images", str(low), "--output_dir", str(model))
    assert "made by python -m helpers.upscaler, not python -m helpers.upscaler upscale" in said
    _refused(
        capsys,
        upscaler_cli.main,
        *("finetune", "--instance_data_dir", str(low), "--output_dir", str(elsewhere)),
        says=("made by python -m helpers.generate",),
    )
    assert (model / "model_index.json").read_text() == "{}" and made_by(elsewhere) == "helpers.generate"


def test_upscale_replaces_its_own_folder(tmp_path, low, capsys):
    out = tmp_path / "big"
    argv = ("upscale", "--images", str(low), "--output_dir", str(out), "--num_inference_steps", "1")
    assert _run(upscaler_cli.main, *argv) == 0
    (low / "1.png").unlink()
    assert _run(upscaler_cli.main, *argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARK, "0000.png"]  # the first run's second image is gone
    assert made_by(out) == upscaler_cli.UPSCALED


def test_upscaler_pretrain_replaces_its_own_folder(tmp_path, capsys):
    out = tmp_path / "ups"
    argv = ("pretrain", "--output", str(out), "--max_train_steps", "1", "--train_batch_size", "1")
    assert _run(upscaler_cli.main, *argv) == 0
    assert _run(upscaler_cli.main, *argv, "--seed", "1") == 0
    assert made_by(out) == upscaler_cli.TOOL
    assert [s["seed"] for s in json.loads((out / upscaler_cli.STAGES).read_text())] == [1]


# --------------------------------------------------------------------------- python -m helpers.pretrain


@pytest.fixture
def no_training(monkeypatch):
    _forbid(monkeypatch, pretrain, "train_vae", "train_unet")
    _forbid(monkeypatch, judge_mod, "train_judge")
    _forbid(monkeypatch, pretrain.AutoencoderKL, "from_pretrained")


@pytest.mark.parametrize("stage", ["vae", "unet", "judge", "all"])
def test_pretrain_refuses_the_learners_folder_before_training(own, stage, capsys, no_training):
    before = _files(own)
    _refused(capsys, pretrain.main, stage, "--output", str(own), says=("--output", *DID_NOT_MAKE))
    assert _files(own) == before and sorted(p.name for p in own.parent.iterdir()) == ["mine"]


def test_pretrain_refuses_a_learners_folder_where_a_stage_or_the_judge_would_go(tmp_path, capsys, no_training):
    for name in ("toy-vae-stage", "toy-judge"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("mine\n")
    said = _refused(capsys, pretrain.main, "vae", "--output", str(tmp_path / "toy"))
    assert "--output's stage folder" in said and "toy-vae-stage already holds" in said
    (tmp_path / "toy-vae-stage" / "notes.txt").unlink()
    said = _refused(capsys, pretrain.main, "all", "--output", str(tmp_path / "toy"))
    assert "--output's judge folder" in said and "toy-judge already holds" in said
    assert (tmp_path / "toy-judge" / "notes.txt").read_text() == "mine\n" and not (tmp_path / "toy").exists()


def test_pretrain_and_its_judge_never_replace_each_others_folders(tmp_path, elsewhere, capsys, no_training):
    model = tmp_path / "toy-sd"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    mark(model, pretrain.TOOL)
    said = _refused(capsys, pretrain.main, "judge", "--output", str(model))
    assert "made by python -m helpers.pretrain, not python -m helpers.pretrain judge" in said
    _refused(capsys, pretrain.main, "unet", "--output", str(elsewhere), says=("made by python -m helpers.generate",))
    assert (model / "model_index.json").read_text() == "{}"


def test_a_vae_stage_folder_it_made_is_trained_again(tmp_path, monkeypatch, capsys):
    measure = pretrain.held_out_pass  # on 4 renders, not 512: what is tested is the folder
    monkeypatch.setattr(pretrain, "held_out_pass", lambda vae: measure(vae, 4))
    out, tiny = tmp_path / "toy", ("--vae_steps", "1", "--vae_batch_size", "2")
    assert _run(pretrain.main, "vae", "--output", str(out), *tiny) == 0
    stage = pretrain.vae_stage_dir(out)
    assert made_by(stage) == pretrain.TOOL
    assert _run(pretrain.main, "vae", "--output", str(out), *tiny, "--seed", "1") == 0
    assert [e["report"]["seed"] for e in pretrain.vae_stages(out)] == [1]


def test_the_unet_stage_refuses_a_stage_folder_another_command_made(tmp_path, capsys, no_training):
    (tmp_path / "toy-unet-stage").mkdir()
    (tmp_path / "toy-unet-stage" / "cache.pt").write_bytes(b"cache")
    mark(tmp_path / "toy-unet-stage", "helpers.locator")
    _refused(
        capsys, pretrain.main, "unet", "--output", str(tmp_path / "toy"), says=("made by python -m helpers.locator",)
    )
    assert (tmp_path / "toy-unet-stage" / "cache.pt").read_bytes() == b"cache"


def test_the_judge_replaces_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(judge_mod, "ACCURACY_RENDERS", 4)
    out = tmp_path / "judge"
    assert _run(pretrain.main, "judge", "--output", str(out), "--judge_steps", "1") == 0
    (out / "stale.txt").write_text("stale")
    assert _run(pretrain.main, "judge", "--output", str(out), "--judge_steps", "1", "--seed", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == [MARK, "README.md", "judge.safetensors"]
    assert made_by(out) == judge_mod.MADE_BY


# --------------------------------------------------------------------------- python -m helpers.locator


def test_locator_refuses_the_learners_and_another_commands_folder(own, elsewhere, monkeypatch, capsys):
    _forbid(monkeypatch, locator, "Locator", "train_steps")
    _forbid(monkeypatch, pretrain.AutoencoderKL, "from_pretrained")
    before = _files(own)
    _refused(capsys, locator.main, "--output", str(own), says=("--output", *DID_NOT_MAKE))
    assert _files(own) == before
    _refused(capsys, locator.main, "--output", str(elsewhere), says=("made by python -m helpers.generate",))


def test_locator_replaces_its_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(locator, "accuracy_on_fresh_renders", lambda *args, **kw: {"objects_found": 0.5})
    out = tmp_path / "locator"
    argv = ("--output", str(out), "--steps", "1", "--batch_size", "2")
    assert _run(locator.main, *argv) == 0
    (out / "stale.txt").write_text("stale")
    assert _run(locator.main, *argv, "--seed", "1") == 0
    assert sorted(p.name for p in out.iterdir()) == [MARK, "README.md", "locator.safetensors"]
    assert made_by(out) == locator.TOOL and "--seed 1" in (out / "README.md").read_text()
