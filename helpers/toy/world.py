"""The toy world: a procedural renderer of captioned scenes that the toy Stable Diffusion learns.

Real DreamBooth needs a model that already knows what "a dog" looks like in many variations, so
that a rare identifier can be bound to one particular dog while the class keeps its variety. The
toy world provides exactly that on a CPU: eight object classes, ten colours, two sizes, positions,
backgrounds, instance details (a second colour, a pattern, a body shape) and rare-token instance
names ("a photo of kaw dog") that teach the text encoder that an unfamiliar word can carry
identity. Every image is a deterministic function of a seed, and each scene also renders as
structure-only images (outline, edges, layout) for the ControlNet lessons, and at 128 px with a
small emblem on each object for the super-resolution lesson.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("dog", "cat", "sunglasses", "cup", "house", "tree", "car", "flower")
COLOURS = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (240, 220, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "purple": (148, 60, 189),
    "pink": (247, 140, 200),
    "brown": (140, 86, 45),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "big")
POSITIONS = ("left", "center", "right")
POSITION_X = {"left": 0.3, "center": 0.5, "right": 0.7}
POSITION_PHRASES = {"left": "on the left", "center": "in the center", "right": "on the right"}
BACKGROUNDS = ("plain", "grass", "beach", "night", "room", "snow")
BACKGROUND_PHRASES = {
    "plain": "on a plain background",
    "grass": "in a grassy field",
    "beach": "on the beach",
    "night": "at night",
    "room": "in a room",
    "snow": "in the snow",
}
PATTERNS = ("plain", "spots", "stripes")
# Fine detail for the super-resolution lesson: a mark a few pixels wide that a 128 px render
# shows and a 64 px one blurs into a blob. Anchors are in each class's drawing coordinates.
EMBLEMS = ("star", "ring", "cross", "diamond")
EMBLEM_ANCHORS = {
    "dog": (-0.15, 0.05),
    "cat": (-0.1, 0.25),
    "sunglasses": (0.47, -0.02),
    "cup": (0.0, 0.05),
    "house": (0.0, -0.32),
    "tree": (0.0, -0.2),
    "car": (-0.2, 0.02),
    "flower": (0.0, -0.35),
}
EMBLEM_RADIUS = 0.09
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Instance:
    """What makes one object itself: its class, colours, pattern and shape."""

    cls: str
    colour: str
    accent: str
    pattern: str
    shape: tuple[float, float, float] = (0.5, 0.5, 0.5)
    emblem: str = ""  # a small mark drawn only in detailed renders (see EMBLEMS)
    emblem_colour: str = "yellow"


@dataclass(frozen=True)
class Placed:
    """An instance somewhere in a scene: centre in [0, 1]^2, size as a fraction of the image."""

    instance: Instance
    x: float = 0.5
    y: float = 0.55
    size: float = 0.55
    flip: bool = False


@dataclass(frozen=True)
class Scene:
    objects: tuple[Placed, ...]
    background: str = "plain"
    tint: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class Sample:
    """A rendered scene's caption and labels (the judge's training targets)."""

    scene: Scene
    caption: str
    size_word: str = ""
    position: str = "center"
    name: str = ""
    labels: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- instances


def random_instance(rng: random.Random, cls: str | None = None, colour: str | None = None) -> Instance:
    """A random instance; class and colour may be fixed."""
    cls = cls or rng.choice(CLASSES)
    colour = colour or rng.choice(COLOUR_NAMES)
    accent = rng.choice([c for c in COLOUR_NAMES if c != colour])
    pattern = rng.choice(PATTERNS)
    shape = tuple(round(rng.random(), 3) for _ in range(3))
    return Instance(cls, colour, accent, pattern, shape)


@functools.cache
def rare_tokens(count: int = 256, seed: int = 4321) -> tuple[str, ...]:
    """Three-letter strings with no fixed meaning in the toy world, ``sks`` among them.

    CLIP's vocabulary, learned from web text, holds thousands of such short rare tokens; DreamBooth
    picks its identifier from them. The toy vocabulary gets a band of its own: 48 are names bound
    to one instance each, the others appear now and then in front of a random instance, so each
    is known to mark *some* identity but none in particular.
    """
    rng = random.Random(seed)
    known = set(vocabulary_words())
    words = {"sks"}
    while len(words) < count:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3))
        if word not in known:
            words.add(word)
    return tuple(sorted(words))


def named_instances(count: int = 48, seed: int = 1234) -> dict[str, Instance]:
    """Rare tokens bound to one instance each, used in a small share of pretraining captions."""
    rng = random.Random(seed)
    names = rng.sample([t for t in rare_tokens() if t != "sks"], count)
    return {name: random_instance(rng) for name in names}


# --------------------------------------------------------------------------- drawing


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v + rng.randint(-amount, amount)))) for v in rgb)


def _draw_background(draw: ImageDraw.ImageDraw, name: str, s: int, rng: random.Random) -> None:
    horizon = int(s * rng.uniform(0.55, 0.7))
    if name == "plain":
        grey = rng.randint(150, 215)
        draw.rectangle((0, 0, s, s), fill=_jitter((grey, grey, grey + 8), rng, 6))
    elif name == "grass":
        draw.rectangle((0, 0, s, horizon), fill=_jitter((150, 200, 245), rng))
        draw.rectangle((0, horizon, s, s), fill=_jitter((95, 170, 70), rng))
    elif name == "beach":
        sea = int(horizon * 0.8)
        draw.rectangle((0, 0, s, sea), fill=_jitter((160, 210, 250), rng))
        draw.rectangle((0, sea, s, horizon), fill=_jitter((40, 110, 190), rng))
        draw.rectangle((0, horizon, s, s), fill=_jitter((235, 210, 150), rng))
    elif name == "night":
        draw.rectangle((0, 0, s, s), fill=_jitter((15, 20, 60), rng, 6))
        for _ in range(12):
            x, y, r = rng.randrange(s), rng.randrange(horizon), s // 128 + 1
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 210))
        draw.rectangle((0, horizon, s, s), fill=_jitter((30, 40, 50), rng, 6))
    elif name == "room":
        draw.rectangle((0, 0, s, horizon), fill=_jitter((225, 205, 170), rng))
        draw.rectangle((0, horizon, s, s), fill=_jitter((150, 100, 60), rng))
    elif name == "snow":
        draw.rectangle((0, 0, s, horizon), fill=_jitter((190, 215, 235), rng))
        draw.rectangle((0, horizon, s, s), fill=_jitter((235, 240, 250), rng, 6))
    else:
        raise ValueError(f"unknown background {name!r}; choose one of {BACKGROUNDS}")


class _Pen:
    """Draws in object coordinates: (u, v) in [-1, 1]^2 mapped to a box on the canvas."""

    def __init__(self, draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, placed: Placed, s: int, label: int):
        self.draw, self.mask, self.label = draw, mask, label
        self.cx, self.cy = placed.x * s, placed.y * s
        self.half = placed.size * s / 2
        self.flip = -1 if placed.flip else 1

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return self.cx + self.flip * u * self.half, self.cy + v * self.half

    def box(self, u0: float, v0: float, u1: float, v1: float) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = self.xy(u0, v0), self.xy(u1, v1)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def ellipse(self, box, fill, width: int = 0, outline=None) -> None:
        b = self.box(*box)
        self.draw.ellipse(b, fill=fill, outline=outline, width=width)
        self.mask.ellipse(
            b,
            fill=self.label if fill is not None else None,
            outline=self.label if outline is not None else None,
            width=width,
        )

    def rect(self, box, fill) -> None:
        b = self.box(*box)
        self.draw.rectangle(b, fill=fill)
        self.mask.rectangle(b, fill=self.label)

    def poly(self, points, fill) -> None:
        pts = [self.xy(u, v) for u, v in points]
        self.draw.polygon(pts, fill=fill)
        self.mask.polygon(pts, fill=self.label)

    def line(self, points, fill, width: float) -> None:
        w = max(1, int(width * self.half))
        pts = [self.xy(u, v) for u, v in points]
        self.draw.line(pts, fill=fill, width=w)
        self.mask.line(pts, fill=self.label, width=w)


def _pattern(pen: _Pen, box, accent, pattern: str, seed: float) -> None:
    """Spots or stripes of the accent colour inside an ellipse-ish region."""
    u0, v0, u1, v1 = box
    if pattern == "spots":
        rng = random.Random(int(seed * 1000))
        for _ in range(3):
            u = rng.uniform(u0 + 0.15, u1 - 0.15)
            v = rng.uniform(v0 + 0.1, v1 - 0.1)
            r = 0.09
            pen.draw.ellipse(pen.box(u - r, v - r, u + r, v + r), fill=accent)
    elif pattern == "stripes":
        for k in range(3):
            u = u0 + (u1 - u0) * (k + 1) / 4
            pen.draw.line([pen.xy(u, v0 + 0.05), pen.xy(u, v1 - 0.05)], fill=accent, width=max(1, int(0.08 * pen.half)))


def _draw_dog(pen: _Pen, inst: Instance, body, accent) -> None:
    a, b, c = inst.shape
    leg = 0.25 + 0.2 * b
    body_box = (-0.7, -0.2, 0.45, 0.25 + 0.1 * a)
    for u in (-0.55, -0.3, 0.15, 0.35):
        pen.rect((u, 0.1, u + 0.13, 0.2 + leg + 0.1 * a), body)
    pen.line([(-0.65, -0.05), (-0.95, -0.35 - 0.3 * c)], body, 0.1)
    pen.ellipse(body_box, body)
    _pattern(pen, body_box, accent, inst.pattern, sum(inst.shape))
    pen.ellipse((0.3, -0.62, 0.8, -0.12), body)
    pen.ellipse((0.72, -0.4, 0.95, -0.22), body)
    if b > 0.5:  # floppy ears
        pen.ellipse((0.3, -0.55, 0.45, -0.2), accent)
    else:  # pointy ears
        pen.poly([(0.35, -0.5), (0.45, -0.85), (0.55, -0.52)], accent)
    pen.ellipse((0.58, -0.46, 0.66, -0.38), (10, 10, 10))


def _draw_cat(pen: _Pen, inst: Instance, body, accent) -> None:
    a, b, c = inst.shape
    body_box = (-0.55, -0.1, 0.35, 0.55)
    pen.line([(-0.5, 0.4), (-0.8, 0.0), (-0.75 + 0.2 * c, -0.5)], body, 0.1)
    pen.ellipse(body_box, body)
    _pattern(pen, body_box, accent, inst.pattern, sum(inst.shape))
    pen.ellipse((0.05, -0.6, 0.65, -0.05 - 0.1 * a), body)
    pen.poly([(0.08, -0.35), (0.12, -0.85 - 0.1 * b), (0.3, -0.5)], body)
    pen.poly([(0.4, -0.5), (0.58, -0.85 - 0.1 * b), (0.62, -0.35)], body)
    pen.ellipse((0.15, -0.42, 0.25, -0.32), accent)
    pen.ellipse((0.42, -0.42, 0.52, -0.32), accent)


def _draw_sunglasses(pen: _Pen, inst: Instance, frame, accent) -> None:
    a, b, c = inst.shape
    lens = (40, 40, 50) if inst.pattern == "plain" else accent
    top, bottom = -0.3 - 0.1 * a, 0.25 + 0.1 * b
    pen.line([(-0.85, -0.15), (-0.98, -0.45)], frame, 0.08)
    pen.line([(0.85, -0.15), (0.98, -0.45)], frame, 0.08)
    for u0, u1 in ((-0.85, -0.1), (0.1, 0.85)):
        if c > 0.5:
            pen.ellipse((u0, top, u1, bottom), lens, width=max(1, int(0.1 * pen.half)), outline=frame)
        else:
            pen.rect((u0, top, u1, bottom), frame)
            pen.rect((u0 + 0.08, top + 0.08, u1 - 0.08, bottom - 0.08), lens)
    pen.line([(-0.12, -0.12), (0.12, -0.12)], frame, 0.1)
    if inst.pattern == "stripes":
        pen.line([(-0.7, top + 0.1), (-0.3, bottom - 0.1)], (240, 240, 240), 0.05)


def _draw_cup(pen: _Pen, inst: Instance, body, accent) -> None:
    a, b, _ = inst.shape
    w = 0.45 + 0.15 * a
    pen.ellipse((w - 0.15, -0.35, w + 0.45, 0.25), body, width=max(1, int(0.12 * pen.half)), outline=body)
    pen.poly([(-w, -0.6), (w, -0.6), (w - 0.15 * b, 0.65), (-w + 0.15 * b, 0.65)], body)
    _pattern(pen, (-w, -0.5, w, 0.55), accent, inst.pattern, sum(inst.shape))
    pen.ellipse((-w, -0.68, w, -0.52), accent)


def _draw_house(pen: _Pen, inst: Instance, wall, accent) -> None:
    a, b, c = inst.shape
    roof_h = 0.4 + 0.3 * a
    pen.rect((-0.7, -0.2, 0.7, 0.85), wall)
    pen.poly([(-0.9, -0.15), (0.0, -0.2 - roof_h), (0.9, -0.15)], accent)
    pen.rect((-0.15, 0.35, 0.2, 0.85), (90, 55, 30))
    for u in ((-0.55, -0.3), (0.35, 0.6)) if b > 0.3 else ((-0.55, -0.3),):
        pen.rect((u[0], 0.05, u[1], 0.3), (200, 230, 250))
    if inst.pattern == "stripes":
        for v in (0.0, 0.55):
            pen.draw.line([pen.xy(-0.7, v), pen.xy(0.7, v)], fill=accent, width=max(1, int(0.06 * pen.half)))
    if c > 0.6:
        pen.rect((0.35, -0.75, 0.5, -0.35), accent)


def _draw_tree(pen: _Pen, inst: Instance, leaves, accent) -> None:
    a, b, _ = inst.shape
    pen.rect((-0.12, 0.1, 0.12, 0.9), (110, 70, 35))
    if b > 0.5:
        pen.ellipse((-0.7 - 0.2 * a, -0.9, 0.7 + 0.2 * a, 0.35), leaves)
        _pattern(pen, (-0.6, -0.8, 0.6, 0.25), accent, inst.pattern, sum(inst.shape))
    else:
        pen.poly([(-0.75 - 0.15 * a, 0.3), (0.0, -0.95), (0.75 + 0.15 * a, 0.3)], leaves)
        _pattern(pen, (-0.3, -0.3, 0.3, 0.2), accent, inst.pattern, sum(inst.shape))


def _draw_car(pen: _Pen, inst: Instance, body, accent) -> None:
    a, b, _ = inst.shape
    pen.rect((-0.95, -0.1, 0.95, 0.4), body)
    pen.poly([(-0.5 - 0.2 * a, -0.1), (-0.35, -0.5 - 0.15 * b), (0.35, -0.5 - 0.15 * b), (0.6, -0.1)], body)
    pen.rect((-0.3, -0.4, -0.02, -0.12), (200, 230, 250))
    pen.rect((0.05, -0.4, 0.35, -0.12), (200, 230, 250))
    if inst.pattern != "plain":
        pen.rect((-0.95, 0.08, 0.95, 0.18), accent)
    for u in (-0.55, 0.55):
        pen.ellipse((u - 0.22, 0.2, u + 0.22, 0.64), (20, 20, 20))
        pen.ellipse((u - 0.09, 0.33, u + 0.09, 0.51), accent)


def _draw_flower(pen: _Pen, inst: Instance, petals, accent) -> None:
    a, b, _ = inst.shape
    pen.line([(0.0, 0.0), (0.05, 0.95)], (40, 140, 40), 0.08)
    pen.ellipse((0.0, 0.35, 0.4, 0.55), (40, 140, 40))
    n = 5 + int(3 * a)
    for k in range(n):
        ang = 2 * np.pi * k / n
        u, v = 0.42 * np.cos(ang), -0.35 + 0.42 * np.sin(ang)
        r = 0.22 + 0.08 * b
        pen.ellipse((u - r, v - r, u + r, v + r), petals)
    pen.ellipse((-0.2, -0.55, 0.2, -0.15), accent)


def _draw_emblem(pen: _Pen, inst: Instance) -> None:
    u, v = EMBLEM_ANCHORS[inst.cls]
    r, colour = EMBLEM_RADIUS, COLOURS[inst.emblem_colour]
    if inst.emblem == "star":
        pts = [
            (
                u + (r if k % 2 == 0 else 0.45 * r) * np.sin(np.pi * k / 5),
                v - (r if k % 2 == 0 else 0.45 * r) * np.cos(np.pi * k / 5),
            )
            for k in range(10)
        ]
        pen.poly(pts, colour)
    elif inst.emblem == "ring":
        pen.ellipse((u - r, v - r, u + r, v + r), None, width=max(1, int(0.35 * r * pen.half)), outline=colour)
    elif inst.emblem == "cross":
        pen.rect((u - r, v - 0.3 * r, u + r, v + 0.3 * r), colour)
        pen.rect((u - 0.3 * r, v - r, u + 0.3 * r, v + r), colour)
    elif inst.emblem == "diamond":
        pen.poly([(u, v - r), (u + 0.7 * r, v), (u, v + r), (u - 0.7 * r, v)], colour)
    else:
        raise ValueError(f"unknown emblem {inst.emblem!r}; choose one of {EMBLEMS}")


_DRAWERS = {
    "dog": _draw_dog,
    "cat": _draw_cat,
    "sunglasses": _draw_sunglasses,
    "cup": _draw_cup,
    "house": _draw_house,
    "tree": _draw_tree,
    "car": _draw_car,
    "flower": _draw_flower,
}


def render_with_mask(
    scene: Scene, size: int = 64, seed: int = 0, detail: bool = False
) -> tuple[Image.Image, np.ndarray]:
    """Render a scene and its label map (0 background, k for the k-th object, 1-based).

    ``detail`` adds each instance's emblem; without it the pixels are exactly those the toy model
    was pretrained on.
    """
    s = size * SUPERSAMPLE
    rng = random.Random(seed)
    img = Image.new("RGB", (s, s))
    mask = Image.new("L", (s, s), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    _draw_background(draw, scene.background, s, rng)
    for k, placed in enumerate(scene.objects, start=1):
        inst = placed.instance
        pen = _Pen(draw, mdraw, placed, s, k)
        body = _jitter(COLOURS[inst.colour], rng, 10)
        accent = _jitter(COLOURS[inst.accent], rng, 10)
        _DRAWERS[inst.cls](pen, inst, body, accent)
        if detail and inst.emblem:
            _draw_emblem(pen, inst)
    img = img.resize((size, size), Image.Resampling.BOX)
    labels = np.asarray(mask.resize((size, size), Image.Resampling.NEAREST))
    return img, labels


def render(scene: Scene, size: int = 64, seed: int = 0, detail: bool = False) -> Image.Image:
    """Render a scene to an RGB image; the same scene and seed always give the same pixels."""
    return render_with_mask(scene, size, seed, detail)[0]


def render_structure(scene: Scene, kind: str = "outline", size: int = 64, seed: int = 0) -> Image.Image:
    """Structure-only views of a scene for ControlNet: a filled silhouette outline, edges, or a layout.

    - ``outline``: white object contours on black (what a sketch of the scene looks like);
    - ``edges``: colour edges of the full render, as an edge detector would give;
    - ``layout``: one grey box per object, the kind of drawing a layout planner writes.
    """
    img, labels = render_with_mask(scene, size, seed)
    if kind == "outline":
        lab = labels.astype(np.int16)
        edge = np.zeros_like(lab, dtype=bool)
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        return Image.fromarray((edge * 255).astype(np.uint8)).convert("RGB")
    if kind == "edges":
        return img.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 40 else 0).convert("RGB")
    if kind == "layout":
        out = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(out)
        for k in range(1, len(scene.objects) + 1):
            ys, xs = np.nonzero(labels == k)
            if len(xs):
                draw.rectangle((xs.min(), ys.min(), xs.max(), ys.max()), outline=(255, 255, 255))
        return out
    raise ValueError(f"unknown structure kind {kind!r}; choose outline, edges or layout")


# --------------------------------------------------------------------------- captions


def caption_for(placed: Placed, background: str, size_word: str, position: str, name: str, rng: random.Random) -> str:
    """A caption in the style of "a photo of a big red dog on the left in the snow".

    Each attribute is mentioned only sometimes, so that a bare class prompt ("a photo of a dog")
    covers the whole variety of that class: that variety is what prior preservation protects. The
    plain background is named as often as the others: left unnamed, it was a third of the captions
    that name no background, and bare prompts drew plain grey most of the time.
    """
    inst = placed.instance
    words = ["a photo of"]
    if name:
        words.append(f"{name} {inst.cls}")
    else:
        desc = []
        if size_word and rng.random() < 0.4:
            desc.append(size_word)
        if rng.random() < 0.7:
            desc.append(inst.colour)
        desc.append(inst.cls)
        article = rng.choice(("a", "a", ""))
        if article and desc[0][0] in "aeiou":
            article = "an"
        words.append(article + " " + " ".join(desc))
    if rng.random() < 0.4:
        words.append(POSITION_PHRASES[position])
    if rng.random() < 0.6:
        words.append(BACKGROUND_PHRASES[background])
    return " ".join(" ".join(words).split())


def place(
    instance: Instance, rng: random.Random, size_word: str | None = None, position: str | None = None
) -> tuple[Placed, str, str]:
    size_word = size_word or rng.choice(SIZES)
    position = position or rng.choice(POSITIONS)
    size = rng.uniform(0.36, 0.46) if size_word == "small" else rng.uniform(0.56, 0.7)
    x = POSITION_X[position] + rng.uniform(-0.05, 0.05)
    if size_word == "big":
        x = 0.5 + (x - 0.5) * 0.6
    y = rng.uniform(0.5, 0.6)
    return Placed(instance, x, y, size, rng.random() < 0.5), size_word, position


def random_sample(
    seed: int, names: dict[str, Instance] | None = None, name_prob: float = 0.15, stray_prob: float = 0.05
) -> Sample:
    """One random captioned scene. With ``names``, a share of captions name a bound instance
    ("a photo of vek dog") and a smaller share put an unbound rare token before a random one."""
    rng = random.Random(seed)
    name = ""
    draw = rng.random()
    if names and draw < name_prob:
        name = rng.choice(sorted(names))
        instance = names[name]
    else:
        instance = random_instance(rng)
        if names and draw < name_prob + stray_prob:
            name = rng.choice([t for t in rare_tokens() if t not in names])
    placed, size_word, position = place(instance, rng)
    background = rng.choice(BACKGROUNDS)
    scene = Scene((placed,), background)
    caption = caption_for(placed, background, size_word, position, name, rng)
    labels = {
        "class": CLASSES.index(instance.cls),
        "colour": COLOUR_NAMES.index(instance.colour),
        "accent": COLOUR_NAMES.index(instance.accent),
        "pattern": PATTERNS.index(instance.pattern),
        "size": SIZES.index(size_word),
        "position": POSITIONS.index(position),
        "background": BACKGROUNDS.index(background),
        "shape": instance.shape,
    }
    return Sample(scene, caption, size_word, position, name, labels)


SUBJECT_BACKGROUNDS = ("plain", "grass", "room", "beach")  # the subject photos' scenes, in turn


def subject_scenes(
    instance: Instance, count: int, seed: int = 0, backgrounds: tuple[str, ...] = SUBJECT_BACKGROUNDS
) -> list[Scene]:
    """The same subject in new poses and scenes: what a learner photographs for DreamBooth."""
    rng = random.Random(seed)
    scenes = []
    for k in range(count):
        placed, _, _ = place(instance, rng, size_word="big")
        scenes.append(Scene((dataclasses.replace(placed, flip=bool(k % 2)),), backgrounds[k % len(backgrounds)]))
    return scenes


def subject_views(
    instance: Instance,
    count: int,
    seed: int = 0,
    backgrounds: tuple[str, ...] = SUBJECT_BACKGROUNDS,
    size: int = 64,
    detail: bool = False,
) -> list[Image.Image]:
    """Renders of `subject_scenes`, each with its own colour jitter."""
    scenes = subject_scenes(instance, count, seed, backgrounds)
    return [render(scene, size, seed * 1000 + k, detail) for k, scene in enumerate(scenes)]


def emblem_box(placed: Placed, size: int, margin: float = 1.5) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom) around an instance's emblem, for crops and metrics."""
    u, v = EMBLEM_ANCHORS[placed.instance.cls]
    half = placed.size * size / 2
    x = placed.x * size + (-1 if placed.flip else 1) * u * half
    y = placed.y * size + v * half
    r = margin * EMBLEM_RADIUS * half
    return int(x - r), int(y - r), int(np.ceil(x + r)), int(np.ceil(y + r))


# --------------------------------------------------------------------------- prompts


def noun_phrase(cls: str, colour: str | None = None) -> str:
    """ "an orange car", "pink sunglasses": the article English wants (none for a plural)."""
    words = " ".join(w for w in (colour, cls) if w)
    return words if cls.endswith("s") else ("an " if words[0] in "aeiou" else "a ") + words


def prompt_for(cls: str, colour: str | None = None, position: str | None = None) -> str:
    """A prompt in the captions' style: "a photo of an orange car", "a photo of pink sunglasses on the left"."""
    return f"a photo of {noun_phrase(cls, colour)}" + (f" {POSITION_PHRASES[position]}" if position else "")


def parse_prompt(prompt: str) -> dict[str, str | None]:
    """The class, colour, position and background a toy prompt asks for (None where it does not say)."""
    words = prompt.lower().replace(",", " ").split()
    phrase = " ".join(words)
    background = next((name for name, p in BACKGROUND_PHRASES.items() if p in phrase), None)
    found = {"class": None, "colour": None, "position": None, "background": background}
    for w in words:
        if w in CLASSES and found["class"] is None:
            found["class"] = w
        elif w in COLOURS and found["colour"] is None:
            found["colour"] = w
        elif w in POSITIONS and found["position"] is None:
            found["position"] = w
    return found


def vocabulary_words() -> list[str]:
    """Every word the toy captions use apart from made-up names (the tokenizer's whole words)."""
    words = {"a", "an", "photo", "of"} | set(CLASSES) | set(COLOUR_NAMES) | set(SIZES)
    for phrase in list(POSITION_PHRASES.values()) + list(BACKGROUND_PHRASES.values()):
        words |= set(phrase.split())
    return sorted(words)


# --------------------------------------------------------------------------- committed subjects

# The toy subjects a learner DreamBooths: a spotted brown dog and pink sunglasses, echoing the two
# real subjects in data/dreambooth/. Instance details (accent colour, pattern, shape) are what
# subject fidelity must recover; class and colour alone are shared with many other instances. The
# emblem (a blue star, a white cross) is the fine detail that only the 128 px photos show.
SUBJECTS = {
    "toy_dog": Instance("dog", "brown", "white", "spots", (0.8, 0.7, 0.3), emblem="star", emblem_colour="blue"),
    "toy_sunglasses": Instance(
        "sunglasses", "pink", "black", "stripes", (0.3, 0.6, 0.8), emblem="cross", emblem_colour="white"
    ),
}
SUBJECT_VIEWS = {"toy_dog": 5, "toy_sunglasses": 6}


def shrink(photo: Image.Image, size: int = 64) -> Image.Image:
    """A 128 px original box-downsampled, as a learner shrinks real photos to the model's resolution."""
    return photo.resize((size, size), Image.Resampling.BOX)


def new_subject_photos(name: str, count: int, seed: int) -> list[Image.Image]:
    """Photos of a committed subject in poses and scenes its committed photos do not show (``seed`` > 0),
    made as those were: what a perfect DreamBooth sample of the subject would look like."""
    return [shrink(v) for v in subject_views(SUBJECTS[name], count, seed=seed, size=128, detail=True)]


def class_scenes(cls: str, count: int, seed: int) -> list[Scene]:
    """Random instances of one class in random sizes, positions and backgrounds: what a class prompt
    ("a photo of a dog") should draw."""
    rng = random.Random(seed)
    return [Scene((place(random_instance(rng, cls=cls), rng)[0],), rng.choice(BACKGROUNDS)) for _ in range(count)]


def class_views(cls: str, count: int, seed: int) -> list[Image.Image]:
    """Renders of `class_scenes`, to compare a class prompt's samples with."""
    return [render(scene, seed=seed * 1000 + k) for k, scene in enumerate(class_scenes(cls, count, seed))]


def subject_captions(name: str, identifier: str) -> list[str]:
    """A caption for each committed photo of a toy subject, as a learner would write one: the
    identifier, the class and the scene it was photographed in ("a photo of sks dog in a room")."""
    cls = SUBJECTS[name].cls
    return [
        f"a photo of {identifier} {cls} {BACKGROUND_PHRASES[SUBJECT_BACKGROUNDS[k % len(SUBJECT_BACKGROUNDS)]]}"
        for k in range(SUBJECT_VIEWS[name])
    ]


def write_subjects(folder: str | Path, seed: int = 0) -> list[Path]:
    """Render each toy subject's photos: ``folder/<name>/NN.png`` at 64 px (what DreamBooth trains on)
    and ``folder-128/<name>/NN.png`` at 128 px with the emblem (the originals, for super-resolution).

    The 64 px photos are box-downsampled originals, as a learner would shrink real photos, so the
    emblem is in them too, as the blob that 64 px can hold.
    """
    folder = Path(folder)
    written = []
    for name, instance in SUBJECTS.items():
        views = subject_views(instance, SUBJECT_VIEWS[name], seed=seed, size=128, detail=True)
        for out, images in (
            (folder / name, [shrink(v) for v in views]),
            (folder.with_name(f"{folder.name}-128") / name, views),
        ):
            out.mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(images):
                img.save(out / f"{k:02d}.png")
                written.append(out / f"{k:02d}.png")
    return written


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.toyworld", description="Render the toy subjects' photos.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("subjects", help="write data/subjects/<name>/NN.png and data/subjects-128/")
    parser.parse_args(argv)
    from helpers.core.paths import DATA

    for path in write_subjects(DATA / "subjects"):
        print(path)
