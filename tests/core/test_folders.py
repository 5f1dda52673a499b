"""helpers.core.folders: a command replaces or deletes only a folder it made, and says so before any work."""

import errno
import json
import os

import pytest

from helpers.core import folders
from helpers.core.cli import run_main
from helpers.core.errors import UsageError
from helpers.core.folders import (
    MARK,
    building,
    check_output,
    claim_output,
    made_by,
    mark,
    remove_output,
    staged,
)
from helpers.core.paths import DATA

TOOL = "helpers.example"


def _files(folder) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes: what must not change when a command is refused."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def own(tmp_path):
    """A learner's folder: a photo and their notes, which no command made."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "photo.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("my notes\n")
    return folder


@pytest.fixture
def made(tmp_path):
    """A folder that ``TOOL`` made earlier: a model file and a subfolder."""
    folder = tmp_path / "made"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(b"old weights")
    (folder / "README.md").write_text("old card\n")
    mark(folder, TOOL)
    return folder


def test_a_mark_names_the_command_and_reads_back(tmp_path):
    mark(tmp_path, TOOL)
    saved = json.loads((tmp_path / MARK).read_text())
    assert saved["made_by"] == TOOL and f"python -m {TOOL}" in saved["note"]
    assert made_by(tmp_path) == TOOL
    assert made_by(tmp_path / "missing") is None
    (tmp_path / MARK).write_text("{not json")
    assert made_by(tmp_path) is None


def test_new_empty_and_own_folders_are_accepted_and_nothing_is_written(tmp_path, made):
    assert check_output(tmp_path / "new" / "deeper", TOOL) == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", TOOL) == (tmp_path / "empty").resolve()
    assert check_output(made, TOOL) == made.resolve()


@pytest.mark.parametrize("name", ["toy-sd", "toy-sd/unet", "my-new-run"])
def test_the_course_data_folder_is_refused_unless_shipped_ok(name):
    with pytest.raises(UsageError, match=r"--output_dir .* is inside the course's data/ folder.*outputs/") as err:
        check_output(DATA / name, TOOL)
    assert "\n" not in str(err.value)
    assert check_output(DATA / "no-such-model", TOOL, shipped_ok=True) == DATA / "no-such-model"


def test_an_output_equal_to_or_inside_an_input_folder_is_refused(own):
    inputs = {"--instance_data_dir": own, "--class_data_dir": None}
    with pytest.raises(UsageError, match=r"--output_dir .*mine is --instance_data_dir .*mine: .*pass another folder"):
        check_output(own, TOOL, inputs=inputs)
    with pytest.raises(UsageError, match=r"--output_dir .*out is inside --instance_data_dir .*mine"):
        check_output(own / "out", TOOL, inputs=inputs)


def test_a_non_empty_folder_no_command_made_is_refused_naming_what_it_holds(own):
    before = _files(own)
    with pytest.raises(UsageError, match=r"already holds files that python -m helpers.example did not make") as err:
        check_output(own, TOOL, "--output")
    message = str(err.value)
    assert message.startswith(f"--output {own} ") and "(notes.txt, photo.png)" in message
    assert "nothing was changed" in message and "\n" not in message
    for k in range(3):
        (own / f"extra{k}.txt").write_text("x")
    with pytest.raises(UsageError, match=r"\(extra0.txt, extra1.txt, extra2.txt and 2 more\)"):
        check_output(own, TOOL)
    assert {k: v for k, v in _files(own).items() if not k.startswith("extra")} == before


def test_another_commands_folder_and_a_file_are_refused(made, tmp_path):
    with pytest.raises(UsageError, match=r"was made by python -m helpers.example, not python -m helpers.other"):
        check_output(made, "helpers.other")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match=r"--output_dir .*file.txt is a file, not a folder"):
        check_output(tmp_path / "file.txt", TOOL)


def test_claim_makes_and_marks_the_folder_or_says_why_it_cannot(tmp_path, own):
    out = claim_output(tmp_path / "a" / "b", TOOL)
    assert out.is_dir() and made_by(out) == TOOL
    assert claim_output(out, TOOL) == out  # a second run of the same command
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match=r"cannot create --output_dir .*file/sub: Not a directory"):
        claim_output(tmp_path / "file" / "sub", TOOL)
    with pytest.raises(UsageError, match="did not make"):
        claim_output(own, TOOL)
    assert made_by(own) is None


def test_building_swaps_the_new_folder_in_whole_and_marks_it(made):
    with building(made, TOOL) as build:
        assert build.parent == made.parent and build.name.startswith(".made.build-")
        (build / "new.bin").write_bytes(b"new")
    assert _files(made) == {"new.bin": b"new", MARK: (made / MARK).read_bytes()}
    assert made_by(made) == TOOL
    assert os.stat(made).st_mode & 0o777 == 0o755  # an ordinary folder, not mkdtemp's private one
    assert sorted(p.name for p in made.parent.iterdir()) == ["made"]  # no build or old folder left


def test_building_into_a_new_folder_makes_its_parents(tmp_path):
    with building(tmp_path / "a" / "b", TOOL) as build:
        (build / "x").write_text("x")
    assert made_by(tmp_path / "a" / "b") == TOOL and (tmp_path / "a" / "b" / "x").exists()


def test_building_refuses_a_folder_it_did_not_make_before_the_block_runs(own):
    before = _files(own)
    with pytest.raises(UsageError, match="did not make"):
        with building(own, TOOL):
            pytest.fail("the block ran")
    assert _files(own) == before


def test_an_error_in_the_block_leaves_the_old_folder_untouched(made):
    before = _files(made)
    with pytest.raises(RuntimeError, match="crash"):
        with building(made, TOOL) as build:
            (build / "half.bin").write_bytes(b"half")
            raise RuntimeError("crash")
    assert _files(made) == before
    assert sorted(p.name for p in made.parent.iterdir()) == ["made"]


def test_a_full_disk_in_the_block_is_one_line_and_leaves_the_old_folder_untouched(made, capsys):
    before = _files(made)

    def fill_the_disk() -> None:
        with building(made, TOOL) as build:
            (build / "half.bin").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit) as exited:
        run_main(fill_the_disk)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the disk filled up while") and len(err.strip().splitlines()) == 1
    assert "left as it was" in err and "free some space" in err
    assert _files(made) == before
    assert sorted(p.name for p in made.parent.iterdir()) == ["made"]


def test_other_os_errors_in_the_block_are_not_called_a_full_disk(made):
    with pytest.raises(PermissionError):
        with building(made, TOOL):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_a_swap_that_fails_half_way_puts_the_old_folder_back(made, monkeypatch):
    before, real = _files(made), os.replace

    def new_folder_cannot_move_in(src, dst):
        if os.path.basename(src).startswith(".made.build-"):  # the old folder is already moved aside
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(folders.os, "replace", new_folder_cannot_move_in)
    with pytest.raises(UsageError, match="disk filled up"):
        with building(made, TOOL) as build:
            (build / "new.bin").write_bytes(b"new")
    monkeypatch.undo()
    assert _files(made) == before
    assert sorted(p.name for p in made.parent.iterdir()) == ["made"]


def test_staged_entries_replace_their_namesakes_and_leave_the_rest(made):
    (made / "checkpoint-2").mkdir()
    (made / "checkpoint-2" / "state.bin").write_bytes(b"state")
    with staged(made) as stage:
        assert stage.parent == made and stage.name.startswith(".final-")
        (stage / "unet").mkdir()
        (stage / "unet" / "new.bin").write_bytes(b"new")
        (stage / "README.md").write_text("new card\n")
    files = _files(made)
    assert files["unet/new.bin"] == b"new" and "unet/weights.bin" not in files  # a subfolder is replaced whole
    assert files["README.md"] == b"new card\n" and files["checkpoint-2/state.bin"] == b"state"
    assert not [p for p in made.iterdir() if p.name.startswith(".final-")]


@pytest.mark.parametrize("error", [RuntimeError("crash"), OSError(errno.ENOSPC, "No space left on device")])
def test_an_error_while_staging_leaves_the_earlier_entries(made, error):
    before = _files(made)
    with pytest.raises((RuntimeError, UsageError)) as raised:
        with staged(made) as stage:
            (stage / "README.md").write_text("half a card")
            raise error
    if isinstance(error, OSError):
        assert isinstance(raised.value, UsageError) and "disk filled up" in str(raised.value)
    assert _files(made) == before
    assert not [p for p in made.iterdir() if p.name.startswith(".final-")]


def test_remove_output_deletes_only_a_folder_a_command_made(tmp_path, made, own):
    remove_output(tmp_path / "missing", TOOL)  # nothing to do
    before = _files(own)
    with pytest.raises(UsageError, match=r"mine was not made by a course command, so it is not deleted"):
        remove_output(own)
    with pytest.raises(UsageError, match=r"made was not made by python -m helpers.other"):
        remove_output(made, "helpers.other")
    assert _files(own) == before and made.exists()
    remove_output(made, TOOL)
    assert not made.exists()
    mark(own, "helpers.other")
    remove_output(own)  # any course command's folder, when no command is named
    assert not own.exists()
