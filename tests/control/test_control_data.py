"""The ControlNet dataset: rows that match their prompt, a fill50k-style folder, one-line errors."""

import json

import numpy as np
import pytest

from helpers.control import dataset as control_data
from helpers.control import planner
from helpers.core.errors import UsageError
from helpers.toy import relations


def test_rows_come_from_training_pairs_only_and_say_what_they_show():
    for seed in range(100):
        row = control_data.make_row(seed)
        first, _, second = planner.parse_relation_prompt(row.text)
        assert (first.cls, second.cls) not in relations.HELD_OUT_PAIRS
        assert row.image.size == row.conditioning_image.size == (64, 64)
    assert len(relations.train_pairs()) == 8 * 7 - len(relations.HELD_OUT_PAIRS)


def test_written_folder_reads_back_identically(tmp_path):
    out = control_data.write_dataset(tmp_path / "data", count=3, seed=10, progress=False)
    entries = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [sorted(e) for e in entries] == [["conditioning_image", "image", "text"]] * 3
    rows = control_data.load_dataset(out)
    for k, row in enumerate(rows):
        fresh = control_data.make_row(10 + k)
        assert row.text == fresh.text
        assert np.array_equal(np.asarray(row.image), np.asarray(fresh.image))
        assert np.array_equal(np.asarray(row.conditioning_image), np.asarray(fresh.conditioning_image))
    assert not (tmp_path / ".data.build").exists()
    described = json.loads((out / control_data.DESCRIPTION).read_text())
    assert described == {
        "count": 3,
        "seed": 10,
        "command": f"python -m helpers.control_data --output {out} --count 3 --seed 10",
    }


def test_columns_can_be_renamed_and_a_missing_one_is_named(tmp_path):
    out = control_data.write_dataset(tmp_path / "data", count=2, progress=False)
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    renamed = [{"target": e["image"], "source": e["conditioning_image"], "prompt": e["text"]} for e in lines]
    (out / "train.jsonl").write_text("\n".join(json.dumps(e) for e in renamed))
    entries = control_data.read_index(out, "target", "source", "prompt")
    assert [e.text for e in entries] == [e["text"] for e in lines] and entries[0].image == out / lines[0]["image"]
    with pytest.raises(
        UsageError, match="not a row with the columns image, conditioning_image, text .* --image_column"
    ):
        control_data.read_index(out)


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="--count must be a positive"):
        control_data.write_dataset(tmp_path / "x", count=0)
    with pytest.raises(UsageError, match="no train.jsonl"):
        control_data.load_dataset(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(UsageError, match=r"train.jsonl, line 1: not a row"):
        control_data.load_dataset(tmp_path)
