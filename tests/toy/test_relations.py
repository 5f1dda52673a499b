"""Two-object scenes: prompts that say what is drawn, true layouts, and the centroid relation check."""

import numpy as np
import pytest

from helpers.control import planner, tikz
from helpers.toy import relations
from helpers.toy import world as toyworld


def test_samples_are_seeded_and_their_prompts_parse_back():
    a, b = relations.relation_sample(3), relations.relation_sample(3)
    assert a == b
    for seed in range(40):
        s = relations.relation_sample(seed)
        first, relation, second = planner.parse_relation_prompt(s.prompt)
        assert (first.cls, first.colour, relation, second.cls, second.colour) == (
            s.first.cls,
            s.first.colour,
            s.relation,
            s.second.cls,
            s.second.colour,
        )


def test_rendered_objects_stand_in_the_stated_relation():
    for seed in range(60):
        s = relations.relation_sample(seed)
        _, labels = toyworld.render_with_mask(s.scene, 64, seed)
        boxes = relations.object_boxes(labels)
        assert len(boxes) == 2 and None not in boxes
        centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]
        assert relations.relation_holds(centres[0], centres[1], s.relation), (seed, s.prompt, centres)
        assert not relations.relation_holds(centres[1], centres[0], s.relation)


def test_held_out_pairs_are_respected():
    pairs = [("dog", "cup"), ("car", "tree")]
    assert {
        (relations.relation_sample(s, pairs).first.cls, relations.relation_sample(s, pairs).second.cls)
        for s in range(30)
    } == set(pairs)


def test_true_layout_is_planner_tikz_with_boxes_where_the_objects_are():
    s = relations.relation_sample(5)
    drawing = tikz.parse(relations.layout_code(s))
    assert [name for name, _ in drawing.labels] == [s.first.cls, s.second.cls]
    _, labels = toyworld.render_with_mask(s.scene, 64, 0)
    sketch = np.asarray(tikz.render(drawing, 64, labels="none"))
    for k, inst in enumerate((s.first, s.second), start=1):
        inside = sketch[labels == k]
        share = np.mean(np.all(inside == tikz.COLOURS[inst.colour], axis=-1))
        assert share > 0.8, (inst, share)


@pytest.mark.parametrize(
    "relation, first, second, holds",
    [
        ("left", (10, 30), (50, 30), True),
        ("left", (50, 30), (10, 30), False),
        ("above", (30, 10), (30, 50), True),
        ("below", (30, 10), (30, 50), False),
    ],
)
def test_relation_check_uses_image_coordinates(relation, first, second, holds):
    assert relations.relation_holds(first, second, relation) is holds
