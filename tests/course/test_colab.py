"""The notebooks' Colab cell, the command that writes it into them, and outputs that outlive a runtime."""

import json
import os
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT, outputs
from helpers.course.colab import COURSE_REPO, DRIVE_OUTPUTS, main, output_root, setup_cell
from helpers.diffusion import lora
from helpers.dreambooth.trainer import TrainConfig, Trainer, train

SUBJECT = str(ROOT / "data" / "subjects" / "toy_dog")
FORK = "https://github.com/someone/course"


def _run_cell(tmp_path, repo: str, colab: bool = True) -> subprocess.CompletedProcess:
    """The cell in a fresh Python, as on Colab (a fake ``google.colab`` module), cloning into tmp_path/course.

    ``python -m pip`` finds a fake pip first on PYTHONPATH, which notes its arguments in
    tmp_path/pip-args.json instead of installing: the test checks what the cell asks pip for, fast and offline.
    """
    fake_pip = tmp_path / "fake" / "pip"
    fake_pip.mkdir(parents=True, exist_ok=True)
    (fake_pip / "__init__.py").write_text("")
    (fake_pip / "__main__.py").write_text(
        f"import json, sys\nopen({str(tmp_path / 'pip-args.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    cell = setup_cell(repo)
    moved = cell.replace('COURSE_DIR = "/content/course"', f"COURSE_DIR = {json.dumps(str(tmp_path / 'course'))}")
    assert moved != cell
    colab_module = 'import sys, types\nsys.modules["google.colab"] = types.ModuleType("google.colab")\n'
    script = (colab_module if colab else "") + moved + '\nprint("sys.path[0] =", sys.path[0])\n'
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(fake_pip.parent), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )


def _git_repo(folder):
    folder.mkdir()
    (folder / "README.md").write_text("a course\n")
    for args in (
        ["init", "-q"],
        ["add", "README.md"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
    ):
        subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)
    return folder


def test_the_cell_has_the_url_in_one_line_at_the_top_and_compiles():
    lines = setup_cell(FORK).splitlines()
    assert lines[1].startswith("# Your fork: change the next line") and lines[2] == f'COURSE_REPO = "{FORK}"'
    assert sum(FORK in line for line in lines) == 1 and COURSE_REPO not in setup_cell(FORK)
    assert len(lines) <= 25
    compile(setup_cell(), "colab-cell", "exec")


def test_a_failed_clone_is_one_line_with_the_fix(tmp_path):
    bad = str(tmp_path / "no-such-repo")
    done = _run_cell(tmp_path, bad)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"could not clone {bad} (") and "does not exist" in line
    assert line.endswith("check the URL (a fork must be public) and that the runtime has internet")
    assert not (tmp_path / "course").exists() and not (tmp_path / "pip-args.json").exists()


def test_the_cell_clones_installs_and_a_rerun_keeps_the_clone(tmp_path):
    done = _run_cell(tmp_path, str(_git_repo(tmp_path / "repo")))
    assert done.returncode == 0, done.stderr
    course = tmp_path / "course"
    assert (course / "README.md").read_text() == "a course\n"
    assert json.loads((tmp_path / "pip-args.json").read_text()) == ["install", "-q", "-e", str(course)]
    assert f"sys.path[0] = {course}" in done.stdout
    (tmp_path / "pip-args.json").unlink()
    again = _run_cell(tmp_path, str(tmp_path / "no-such-repo"))  # not cloned again, so the URL is never tried
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "pip-args.json").exists()


def test_outside_colab_the_cell_does_nothing(tmp_path):
    done = _run_cell(tmp_path, str(tmp_path / "no-such-repo"), colab=False)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "course").exists() and not (tmp_path / "pip-args.json").exists()


def _cells(folder) -> dict[str, list[dict]]:
    return {p.name: json.loads(p.read_text())["cells"] for p in sorted(folder.glob("*.ipynb"))}


STALE = """# Colab only: fetch the course and install what Colab lacks.
import subprocess, sys
if "google.colab" in sys.modules:
    subprocess.run(["git", "clone", "https://github.com/dreambooth-from-the-inside/course", "/content/course"])"""


def test_the_command_rewrites_cell_1_of_every_notebook_and_check_agrees(tmp_path, capsys):
    copy = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", copy)
    for nb_path in copy.glob("*.ipynb"):  # cells as they were before the URL had one place
        nb = json.loads(nb_path.read_text())
        nb["cells"][1]["source"] = [f"{line}\n" for line in STALE.splitlines()]
        if nb_path.name == "00_setup.ipynb":
            nb["cells"][1] |= {
                "id": "colab-setup",
                "execution_count": 3,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}],
            }
        nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    before = _cells(copy)

    names = sorted(path.name for path in copy.glob("*.ipynb"))
    last = names[-1]
    with pytest.raises(
        UsageError,
        match=rf"the Colab cell of 00_setup.ipynb, 01_.*{re.escape(last)} differs.*run python -m helpers.colab$",
    ):
        main(["--notebooks", str(copy), "--check"])
    main(["--notebooks", str(copy)])
    after = _cells(copy)
    assert sorted(after) == sorted(before) == names and len(names) >= 12
    for name, cells in after.items():
        assert "".join(cells[1]["source"]) == setup_cell()
        assert cells[1]["outputs"] == [] and cells[1]["execution_count"] is None
        assert cells[:1] + cells[2:] == before[name][:1] + before[name][2:]
    assert after["00_setup.ipynb"][1]["id"] == "colab-setup"
    main(["--notebooks", str(copy), "--check"])

    with pytest.raises(UsageError, match=f"run python -m helpers.colab --repo {FORK}$"):
        main(["--notebooks", str(copy), "--check", "--repo", FORK])
    main(["--notebooks", str(copy), "--repo", FORK])
    main(["--notebooks", str(copy), "--repo", FORK, "--check"])
    assert all(FORK in "".join(cells[1]["source"]) for cells in _cells(copy).values())
    assert f"all {len(names)} notebooks clone " + FORK in capsys.readouterr().out


def test_the_command_never_overwrites_another_cell(tmp_path):
    copy = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", copy)
    nb_path = copy / "05_language_drift.ipynb"
    nb = json.loads(nb_path.read_text())
    del nb["cells"][1]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(UsageError, match="05_language_drift.ipynb: cell 1 is not the Colab setup cell"):
        main(["--notebooks", str(copy)])
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    with pytest.raises(UsageError, match=r"no NN_\*\.ipynb notebooks in"):
        main(["--notebooks", str(tmp_path / "empty")])


@pytest.mark.parametrize("lora_rank", [None, 4], ids=["full", "lora"])
def test_a_run_copied_off_a_reset_runtime_resumes_exactly(tmp_path, killed_run, monkeypatch, lora_rank):
    def run(out, **kw):
        return train(
            TrainConfig(
                instance_data_dir=SUBJECT,
                instance_prompt="a photo of sks dog",
                output_dir=str(out),
                max_train_steps=4,
                checkpointing_steps=2,
                progress=False,
                seed=0,
                lora_rank=lora_rank,
                **kw,
            )
        )

    run(tmp_path / "uninterrupted")
    killed_run(Trainer, lambda: run(tmp_path / "runtime"), step=3)
    shutil.copytree(tmp_path / "runtime", tmp_path / "drive")  # what Drive holds when the runtime resets
    shutil.rmtree(tmp_path / "runtime")
    ran, real = [], Trainer._step_loss

    def counted(self, at, micro):
        ran.append(at)
        return real(self, at, micro)

    monkeypatch.setattr(Trainer, "_step_loss", counted)
    result = run(tmp_path / "drive", resume_from_checkpoint="latest")
    assert ran == [2, 3], "it should go on from checkpoint-2, not start again"
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    weights = lora.WEIGHTS if lora_rank else "unet/diffusion_pytorch_model.safetensors"
    full, resumed = (load_file(str(tmp_path / d / weights)) for d in ("uninterrupted", "drive"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_outputs_stay_in_the_repository_unless_drive_is_asked_for(monkeypatch):
    assert output_root() == outputs() and outputs().is_relative_to(ROOT)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(
        UsageError, match="only there on Colab: set OUTPUTS_ON_DRIVE = False in the config cell$"
    ) as err:
        output_root(on_drive=True)
    assert "\n" not in str(err.value)


def test_outputs_on_drive_mount_it_on_colab(monkeypatch):
    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert output_root(on_drive=True) == DRIVE_OUTPUTS
    assert str(DRIVE_OUTPUTS) == "/content/drive/MyDrive/dreambooth-course/outputs"
    assert mounted == ["/content/drive"]
