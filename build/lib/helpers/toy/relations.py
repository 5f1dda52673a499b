"""Two-object toy scenes with a spatial relation, their true layouts, and the relation check.

ControlGPT is judged on prompts such as "a red dog to the left of a blue cup" (VISOR, SR2D):
are both objects there, and do they stand in the stated relation? This module renders such scenes
for ControlNet training, writes their true layout in the same TikZ that planners write (boxes
filled with the object's colour, a node with its name), and decides whether two positions satisfy
a relation the way VISOR does, by comparing the objects' centroids.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from helpers.toy import world as toyworld
from helpers.toy.world import Instance, Placed, Scene

RELATIONS = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
PHRASES = {relation: phrase for phrase, relation in RELATIONS.items()}
# Centres (x, y in [0, 1], y down) of the first and the second object for each relation.
CENTRES = {
    "left": ((0.27, 0.55), (0.73, 0.55)),
    "right": ((0.73, 0.55), (0.27, 0.55)),
    "above": ((0.5, 0.27), (0.5, 0.73)),
    "below": ((0.5, 0.73), (0.5, 0.27)),
}


# Class pairs kept out of ControlNet training, in both orders, so that evaluation asks for
# combinations the model has never been shown together.
HELD_OUT_PAIRS = [(a, b) for a, b in (("dog", "cup"), ("car", "tree"), ("cat", "house")) for a, b in ((a, b), (b, a))]


def train_pairs() -> list[tuple[str, str]]:
    """Every ordered pair of distinct classes except the held-out ones."""
    return [(a, b) for a in toyworld.CLASSES for b in toyworld.CLASSES if a != b and (a, b) not in HELD_OUT_PAIRS]


@dataclass(frozen=True)
class RelationSample:
    """A scene of two objects, the prompt that describes it, and what the prompt says."""

    scene: Scene
    prompt: str
    relation: str
    first: Instance
    second: Instance


def relation_prompt(first: Instance, relation: str, second: Instance) -> str:
    """ "a red dog to the left of a blue cup"."""
    return (
        f"{toyworld.noun_phrase(first.cls, first.colour)} {PHRASES[relation]} "
        f"{toyworld.noun_phrase(second.cls, second.colour)}"
    )


def relation_sample(seed: int, pairs: list[tuple[str, str]] | None = None) -> RelationSample:
    """A random two-object scene; ``pairs`` limits the (first, second) classes (for held-out splits)."""
    rng = random.Random(seed)
    c1, c2 = rng.choice(pairs) if pairs else rng.sample(toyworld.CLASSES, 2)
    first, second = toyworld.random_instance(rng, c1), toyworld.random_instance(rng, c2)
    relation = rng.choice(list(PHRASES))
    placed = []
    for inst, (x, y) in zip((first, second), CENTRES[relation]):
        jitter = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
        placed.append(Placed(inst, x + jitter[0], y + jitter[1], rng.uniform(0.34, 0.42), rng.random() < 0.5))
    scene = Scene(tuple(placed), rng.choice(toyworld.BACKGROUNDS))
    return RelationSample(scene, relation_prompt(first, relation, second), relation, first, second)


def object_boxes(labels: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """Pixel boxes (left, top, right, bottom) of objects 1, 2, ... in a label map (None if hidden)."""
    boxes = []
    for k in range(1, int(labels.max(initial=0)) + 1):
        ys, xs = np.nonzero(labels == k)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else None)
    return boxes


def relation_holds(first: tuple[float, float], second: tuple[float, float], relation: str) -> bool:
    """Whether centroid ``first`` stands in ``relation`` to centroid ``second`` (image coordinates, y down)."""
    (x1, y1), (x2, y2) = first, second
    return {"left": x1 < x2, "right": x1 > x2, "above": y1 < y2, "below": y1 > y2}[relation]


def layout_code(sample: RelationSample, size: int = 64, seed: int = 0) -> str:
    """The scene's true layout as planner-style TikZ: each object's box in its colour, with its name."""
    _, labels = toyworld.render_with_mask(sample.scene, size, seed)
    lines = ["\\begin{tikzpicture}", f"% {sample.prompt}"]
    for inst, box in zip((sample.first, sample.second), object_boxes(labels)):
        if box is None:
            continue
        left, top, right, bottom = (v / size * 10 for v in box)
        x0, y0, x1, y1 = (round(v, 2) for v in (left, 10 - bottom, right, 10 - top))  # TikZ's y points up
        lines.append(f"\\draw[fill={inst.colour}] ({x0},{y0}) rectangle ({x1},{y1});")
        lines.append(f"\\node at ({round((x0 + x1) / 2, 2)},{round((y0 + y1) / 2, 2)}) {{{inst.cls}}};")
    lines.append("\\end{tikzpicture}")
    return "\n".join(lines)


def typical_box_sizes(count: int = 800) -> dict[str, tuple[float, float]]:
    """Median width and height (canvas units, 10 x 10) of each class's box in ``count`` two-object renders."""
    size, canvas = 64, 10  # pixels of the render, TikZ units of the canvas
    sizes: dict[str, list[tuple[float, float]]] = {cls: [] for cls in toyworld.CLASSES}
    for seed in range(count):
        sample = relation_sample(seed)
        _, labels = toyworld.render_with_mask(sample.scene, size, seed)
        for inst, box in zip((sample.first, sample.second), object_boxes(labels)):
            if box is not None:
                sizes[inst.cls].append(((box[2] - box[0]) * canvas / size, (box[3] - box[1]) * canvas / size))
    return {cls: tuple(float(v) for v in np.median(np.array(wh), axis=0)) for cls, wh in sizes.items()}
