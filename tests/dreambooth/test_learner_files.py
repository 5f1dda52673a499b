"""The DreamBooth and ControlNet trainers pointed at a learner's own folders: nothing there is lost.

Each refusal is one ``error:`` line before any model loads, and the folder is byte for byte as it was.
"""

import errno
import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_dreambooth import SUBJECT, toy_config

from helpers.core.cli import run_main
from helpers.core.errors import UsageError
from helpers.core.folders import MARK, made_by
from helpers.core.paths import DATA
from helpers.dreambooth import cli
from helpers.dreambooth.priors import MANIFEST, PriorSettings, class_images, read_manifest
from helpers.dreambooth.trainer import train


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def learner_folder(path: Path, photos: int = 2) -> Path:
    """A folder as a learner fills it: photos of dogs of their own and a note."""
    path.mkdir(parents=True)
    for k in range(photos):
        Image.new("RGB", (64, 64), (40 * k, 90, 200)).save(path / f"my_dog_{k}.png")
    (path / "notes.txt").write_text("my own dog photos\n")
    return path


def one_line(capsys, argv: list[str]) -> str:
    """The command's single error line (exit status 2), as a learner reads it."""
    with pytest.raises(SystemExit) as exit:
        run_main(lambda: cli.main(argv))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def argv(out: Path, *extra: str) -> list[str]:
    return [
        "--instance_data_dir",
        SUBJECT,
        "--instance_prompt",
        "a photo of sks dog",
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "0",
        "--no_progress",
        "--output_dir",
        str(out),
        *extra,
    ]


def prior_argv(out: Path, class_dir: Path, count: int = 3) -> list[str]:
    return argv(out) + [
        "--with_prior_preservation",
        "--class_prompt",
        "a photo of dog",
        "--class_data_dir",
        str(class_dir),
        "--num_class_images",
        str(count),
    ]


# --------------------------------------------------------------------------- output folders


def test_the_shipped_model_is_refused_as_output_and_left_as_it_was(capsys):
    before = snapshot(DATA / "toy-sd")
    line = one_line(capsys, argv(DATA / "toy-sd"))
    assert "inside the course's data/ folder" in line and "outputs/toy-sd" in line
    assert snapshot(DATA / "toy-sd") == before


def test_a_folder_of_the_learners_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    mine = learner_folder(tmp_path / "project")
    (mine / "README.md").write_text("my project\n")
    (mine / "model_index.json").write_text("{}\n")
    before = snapshot(mine)
    line = one_line(capsys, argv(mine))
    assert "already holds files that python -m helpers.dreambooth did not make" in line
    assert "pass a new or empty folder" in line
    assert snapshot(mine) == before


@pytest.mark.parametrize("where", ["the photos", "inside the photos"])
def test_an_output_in_the_instance_folder_is_refused(tmp_path, capsys, where):
    photos = tmp_path / "photos"
    shutil.copytree(SUBJECT, photos)
    before = snapshot(photos)
    out = photos if where == "the photos" else photos / "model"
    line = one_line(capsys, argv(out)[:-2] + ["--output_dir", str(out), "--instance_data_dir", str(photos)])
    assert "--instance_data_dir" in line and "pass another folder" in line
    assert snapshot(photos) == before and not (photos / "model").exists()


def test_a_folder_another_command_made_is_refused(tmp_path, capsys):
    from helpers.core.folders import claim_output

    other = claim_output(tmp_path / "net", "helpers.controlnet")
    (other / "config.json").write_text("{}")
    assert "was made by python -m helpers.controlnet" in one_line(capsys, argv(other))


def test_the_trainer_marks_its_folder_and_a_second_run_replaces_its_model(tmp_path):
    out = tmp_path / "run"
    train(toy_config(out, max_train_steps=2))
    assert made_by(out) == "helpers.dreambooth" and (out / MARK).exists()
    first = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    train(toy_config(out, max_train_steps=2, seed=1))
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != first
    assert not [p for p in out.iterdir() if p.name.startswith(".final-")]


def test_a_full_disk_during_the_final_save_keeps_the_earlier_model_whole(tmp_path, monkeypatch, capsys):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "run"
    train(toy_config(out, max_train_steps=2))
    before = {k: v for k, v in snapshot(out).items() if not k.endswith(".json") and "logs" not in k}
    real = StableDiffusionPipeline.save_pretrained

    def fills_the_disk(self, folder, **kw):
        real(self, folder, **kw)  # every file written, then the disk is full on the last one
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StableDiffusionPipeline, "save_pretrained", fills_the_disk)
    line = one_line(capsys, argv(out, "--seed", "1"))
    assert "the disk filled up" in line and "left as it was" in line
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".final-")]


# --------------------------------------------------------------------------- class images


def test_the_learners_class_images_are_kept_and_used_and_only_the_rest_is_drawn(tmp_path, toy_pipe):
    folder = learner_folder(tmp_path / "dogs")
    before = snapshot(folder)
    settings = PriorSettings(model="toy", prompt="a photo of dog", count=5, num_inference_steps=4)
    paths, report = class_images(folder, settings, lambda: toy_pipe, progress=False)
    assert [p.name for p in paths] == [
        "my_dog_0.png",
        "my_dog_1.png",
        "class-00000.png",
        "class-00001.png",
        "class-00002.png",
    ]
    assert (report["learner"], report["generated"], report["reused"]) == (2, 3, False)
    assert read_manifest(folder)["files"] == ["class-00000.png", "class-00001.png", "class-00002.png"]
    assert {k: v for k, v in snapshot(folder).items() if k in before} == before
    # another seed draws its own images again: only the drawn ones are replaced
    reseeded = PriorSettings(model="toy", prompt="a photo of dog", count=5, num_inference_steps=4, seed=1)
    _, again = class_images(folder, reseeded, lambda: toy_pipe, progress=False)
    assert again["reused"] is False and again["reason"] == "settings changed: seed 0 -> 1"
    assert {k: v for k, v in snapshot(folder).items() if k in before} == before
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, MANIFEST, *read_manifest(folder)["files"]])


def test_more_class_images_of_the_same_settings_draw_only_the_missing_ones(tmp_path, toy_pipe):
    calls = []
    settings = PriorSettings(model="toy", prompt="a photo of dog", count=2, num_inference_steps=4)
    folder = tmp_path / "dogs"
    class_images(folder, settings, lambda: toy_pipe, progress=False)
    first = snapshot(folder)
    more = PriorSettings(model="toy", prompt="a photo of dog", count=3, num_inference_steps=4)
    paths, report = class_images(folder, more, lambda: calls.append(1) or toy_pipe, progress=False)
    assert report["reason"] == "1 more to draw" and len(calls) == 1 and len(paths) == 3
    assert snapshot(folder)["class-00000.png"] == first["class-00000.png"]
    # drawing image 2 alone gives what drawing all three at once gives (image i comes from seed + i), up to
    # the rounding of a batch of one against a batch of three
    fresh, _ = class_images(tmp_path / "all", more, lambda: toy_pipe, progress=False)
    alone, together = (np.asarray(Image.open(p), dtype=np.int16) for p in (paths[2], fresh[2]))
    assert np.abs(alone - together).max() <= 2


def test_enough_class_images_of_the_learners_own_draw_nothing(tmp_path):
    folder = learner_folder(tmp_path / "dogs", photos=3)
    settings = PriorSettings(model="toy", prompt="a photo of dog", count=2, num_inference_steps=4)
    paths, report = class_images(folder, settings, lambda: pytest.fail("nothing to draw"), progress=False)
    assert [p.name for p in paths] == ["my_dog_0.png", "my_dog_1.png"] and report["generated"] == 0


def test_a_run_with_the_learners_class_images_trains_on_them(tmp_path):
    dogs = learner_folder(tmp_path / "dogs")
    before = snapshot(dogs)
    out = tmp_path / "run"
    result = train(
        toy_config(
            out,
            max_train_steps=2,
            with_prior_preservation=True,
            class_prompt="a photo of dog",
            class_data_dir=str(dogs),
            num_class_images=3,
        )
    )
    assert (result.class_images["learner"], result.class_images["generated"]) == (2, 1)
    assert {k: v for k, v in snapshot(dogs).items() if k in before} == before


def test_the_instance_folder_as_class_folder_is_refused_and_the_photos_stay(tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(SUBJECT, photos)
    before = snapshot(photos)
    line = one_line(capsys, prior_argv(tmp_path / "out", photos) + ["--instance_data_dir", str(photos)])
    assert "--class_data_dir" in line and "--instance_data_dir" in line and "overlap" in line
    assert snapshot(photos) == before and not (tmp_path / "out").exists()


def test_a_class_folder_in_the_shipped_data_is_refused(tmp_path, capsys):
    line = one_line(capsys, prior_argv(tmp_path / "out", DATA / "dreambooth" / "dog"))
    assert "--class_data_dir" in line and "inside the course's data/ folder" in line


# --------------------------------------------------------------------------- prompts


def test_a_caption_whose_identifier_falls_outside_the_window_is_refused(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(SUBJECT, photos)
    first = sorted(photos.glob("*.png"))[0]
    long = " ".join(["a red cup"] * 8) + " and a photo of sks dog"  # 24 toy tokens before "sks"
    first.with_suffix(".txt").write_text(long)
    with pytest.raises(UsageError, match=rf"the caption of {first.name} .* the identifier 'sks' falls outside"):
        train(toy_config(tmp_path / "out", instance_data_dir=str(photos)))
    assert not (tmp_path / "out" / "unet").exists()


def test_a_prompt_longer_than_the_window_warns_once_with_the_tokens_kept(tmp_path):
    prompt = "a photo of sks dog " + " ".join(["on the beach"] * 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(toy_config(tmp_path / "out", instance_prompt=prompt, max_train_steps=1))
    cut = [str(w.message) for w in caught if "tokens long" in str(w.message)]
    assert len(cut) == 1 and "reads the first 22" in cut[0], cut


def test_the_controlnet_trainer_refuses_an_output_in_its_data_folder(tmp_path):
    from helpers.control.dataset import write_dataset
    from helpers.control.trainer import ControlNetConfig, ControlNetTrainer

    data = write_dataset(tmp_path / "data", 2, progress=False)
    before = snapshot(data)
    with pytest.raises(UsageError, match="--output_dir .* is inside --train_data_dir"):
        ControlNetTrainer(ControlNetConfig(train_data_dir=str(data), output_dir=str(data / "net"), progress=False))
    with pytest.raises(UsageError, match="did not make"):
        ControlNetTrainer(ControlNetConfig(train_data_dir=str(data), output_dir=str(learner_folder(tmp_path / "m"))))
    assert snapshot(data) == before
