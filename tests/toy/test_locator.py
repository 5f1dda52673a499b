"""The judge's locator: cell targets from label maps, VISOR-style scoring, the committed weights."""

from pathlib import Path

import numpy as np
import pytest

from helpers.core.errors import UsageError
from helpers.toy import locator as loc
from helpers.toy import relations
from helpers.toy import world as toyworld

DATA = Path(__file__).resolve().parents[2] / "data" / "toy-locator"


def test_cell_targets_name_each_object_and_ignore_the_background_colour():
    s = relations.relation_sample(4)
    _, labels = toyworld.render_with_mask(s.scene, 64, 4)
    cls, colour = loc._targets(s.scene, labels)
    ids = {toyworld.CLASSES.index(s.first.cls) + 1, toyworld.CLASSES.index(s.second.cls) + 1}
    assert cls.shape == (16, 16) and set(np.unique(cls)) == {0} | ids
    assert (colour[cls == 0] == loc.IGNORE).all()
    first = cls == toyworld.CLASSES.index(s.first.cls) + 1
    assert (colour[first] == toyworld.COLOUR_NAMES.index(s.first.colour)).all()


def test_scores_count_presence_and_relation_like_visor():
    samples = [
        relations.RelationSample(
            None,
            "",
            "left",
            toyworld.Instance("dog", "red", "white", "plain"),
            toyworld.Instance("cup", "blue", "white", "plain"),
        )
    ] * 3
    seen = [
        [loc.Found("dog", "red", (10, 30), 9), loc.Found("cup", "blue", (50, 30), 9)],  # right
        [loc.Found("dog", "red", (50, 30), 9), loc.Found("cup", "blue", (10, 30), 9)],  # wrong side
        [loc.Found("dog", "red", (10, 30), 9)],  # cup missing
    ]
    assert loc.score_relations(seen, samples) == {"object_accuracy": 2 / 3, "relation_accuracy": 1 / 3, "prompts": 3}


def test_each_image_gets_one_outcome_that_says_why_it_failed():
    sample = relations.RelationSample(
        None,
        "",
        "left",
        toyworld.Instance("dog", "red", "white", "plain"),
        toyworld.Instance("cup", "blue", "white", "plain"),
    )
    dog, cup = loc.Found("dog", "red", (10, 30), 9), loc.Found("cup", "blue", (50, 30), 9)
    cases = {
        (dog, cup): "both, in relation",
        (loc.Found("dog", "red", (60, 30), 9), cup): "both, relation wrong",
        (dog, loc.Found("house", "blue", (50, 30), 9)): "one missing, another class in its place",
        (dog,): "one missing, nothing in its place",
        (): "both missing",
    }
    for objects, expected in cases.items():
        assert loc.outcome(list(objects), sample) == expected
    assert set(cases.values()) == set(loc.OUTCOMES)


def test_committed_locator_reads_fresh_two_object_scenes():
    locator = loc.load_locator(DATA)
    samples = [relations.relation_sample(s) for s in range(9 * 10**8, 9 * 10**8 + 32)]
    images = [toyworld.render(s.scene, 64, k) for k, s in enumerate(samples)]
    report = loc.score_relations(loc.locate(locator, images), samples)
    assert report["object_accuracy"] >= 0.85 and report["relation_accuracy"] >= 0.85, report
    assert loc.locate(locator, [toyworld.render(toyworld.Scene(()), 64)]) == [[]]  # an empty scene


def test_missing_locator_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="no locator in"):
        loc.load_locator(tmp_path)
