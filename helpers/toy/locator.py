"""The judge's locator: which toy objects an image shows, in which colour, and where.

The toy judge reads one object per image. Spatial prompts ("a red dog to the left of a blue cup")
need more: VISOR-style evaluation asks whether *both* objects are there (object accuracy) and
whether their centroids stand in the stated relation (relation accuracy). The locator is a small
fully convolutional network trained on the renderer's label maps: for every 4 x 4 pixel cell it
predicts the class there (or background) and the colour; objects are then read off the map as the
cells of each class, their centroid and their majority colour.

    python -m helpers.locator --output data/toy-locator
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from helpers.core.atomic import save_safetensors_atomic, write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.folders import building, check_output
from helpers.core.numbers import at_least, seed_in_range
from helpers.core.paths import DATA
from helpers.core.runtime import configure_cpu
from helpers.diffusion.latents import through_vae
from helpers.diffusion.profiles import TOY_MODEL
from helpers.toy import relations
from helpers.toy import world as toyworld
from helpers.toy.judge import blur_and_noise, to_tensor, train_steps, vae_share

CELL = 4  # pixels per map cell: 64 px images give 16 x 16 maps
MIN_CELLS = 3  # fewer cells of a class than this is noise, not an object
IGNORE = -100
TOOL = "helpers.locator"  # the mark on the folder it writes (helpers.core.folders)


class Locator(nn.Module):
    """Conv blocks down to 16 x 16, then per-cell class (background + 8) and colour logits."""

    def __init__(self) -> None:
        super().__init__()
        chans = (3, 32, 64, 64)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
            if i < 2:
                layers += [nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(64, 64, 5, padding=2), nn.GroupNorm(8, 64), nn.SiLU()]  # wider context per cell
        self.features = nn.Sequential(*layers)
        self.cls = nn.Conv2d(64, len(toyworld.CLASSES) + 1, 1)
        self.colour = nn.Conv2d(64, len(toyworld.COLOUR_NAMES), 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images)
        return self.cls(h), self.colour(h)


@dataclass(frozen=True)
class Found:
    """One object the locator sees: class, colour, centroid in pixels (x, y down) and size in cells."""

    cls: str
    colour: str
    centre: tuple[float, float]
    cells: int


# --------------------------------------------------------------------------- data


def _targets(scene: toyworld.Scene, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell class index (0 background) and colour index (IGNORE on background)."""
    small = np.asarray(Image.fromarray(labels).resize((labels.shape[1] // CELL,) * 2, Image.Resampling.NEAREST))
    cls = np.zeros(small.shape, np.int64)
    colour = np.full(small.shape, IGNORE, np.int64)
    for k, placed in enumerate(scene.objects, start=1):
        cls[small == k] = toyworld.CLASSES.index(placed.instance.cls) + 1
        colour[small == k] = toyworld.COLOUR_NAMES.index(placed.instance.colour)
    return cls, colour


def training_batch(seeds: range, vae=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half two-object relation scenes, half single-object scenes, blurred and noised at random;
    with ``vae``, a share of them (``judge.VAE_SHARE``) passed through it first, as generated images are."""
    images, classes, colours = [], [], []
    for seed in seeds:
        scene = relations.relation_sample(seed).scene if seed % 2 else toyworld.random_sample(seed).scene
        img, labels = toyworld.render_with_mask(scene, 64, seed)
        cls, colour = _targets(scene, labels)
        images.append(img)
        classes.append(cls)
        colours.append(colour)
    images = [blur_and_noise(img, random.Random(seed)) for img, seed in zip(vae_share(vae, images, seeds), seeds)]
    return to_tensor(images), torch.from_numpy(np.stack(classes)), torch.from_numpy(np.stack(colours))


# --------------------------------------------------------------------------- reading images


def _components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """4-connected regions of a boolean map, as (ys, xs) index arrays."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, cells = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            cells.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = (np.array(v) for v in zip(*cells))
        regions.append((ys, xs))
    return regions


def _read_map(cls_map: np.ndarray, colour_map: np.ndarray) -> list[Found]:
    """Objects as connected foreground regions, each named by its majority class and colour
    (a few cells of a wrong class inside an object do not make a second object)."""
    found: dict[str, Found] = {}
    for ys, xs in _components(cls_map > 0):
        if len(xs) < MIN_CELLS:
            continue
        cls = toyworld.CLASSES[Counter(cls_map[ys, xs].tolist()).most_common(1)[0][0] - 1]
        colour = toyworld.COLOUR_NAMES[Counter(colour_map[ys, xs].tolist()).most_common(1)[0][0]]
        centre = (float((xs.mean() + 0.5) * CELL), float((ys.mean() + 0.5) * CELL))
        if cls not in found or found[cls].cells < len(xs):
            found[cls] = Found(cls, colour, centre, len(xs))
    return sorted(found.values(), key=lambda f: -f.cells)


@torch.no_grad()
def locate(locator: Locator, images: list[Image.Image], batch_size: int = 64) -> list[list[Found]]:
    """The objects in each image (the largest region per class), largest first."""
    out = []
    for i in range(0, len(images), batch_size):
        cls_logits, colour_logits = locator(to_tensor(images[i : i + batch_size]))
        for cls_map, colour_map in zip(cls_logits.argmax(1).numpy(), colour_logits.argmax(1).numpy()):
            out.append(_read_map(cls_map, colour_map))
    return out


def score_relations(found: list[list[Found]], samples: list[relations.RelationSample]) -> dict[str, float]:
    """VISOR-style accuracies: both classes present; and present and in the stated relation."""
    present = related = 0
    for objects, sample in zip(found, samples, strict=True):
        by_class = {f.cls: f for f in objects}
        a, b = by_class.get(sample.first.cls), by_class.get(sample.second.cls)
        if a and b:
            present += 1
            related += relations.relation_holds(a.centre, b.centre, sample.relation)
    n = len(samples)
    return {"object_accuracy": present / n, "relation_accuracy": related / n, "prompts": n}


OUTCOMES = (
    "both, in relation",
    "both, relation wrong",
    "one missing, another class in its place",
    "one missing, nothing in its place",
    "both missing",
)


def outcome(objects: list[Found], sample: relations.RelationSample) -> str:
    """What the locator made of one image of a two-object prompt, as one of ``OUTCOMES``: it tells a
    layout ignored from objects drawn as the wrong class or too blurred to name."""
    by_class = {f.cls: f for f in objects}
    a, b = by_class.get(sample.first.cls), by_class.get(sample.second.cls)
    if a and b:
        return OUTCOMES[0] if relations.relation_holds(a.centre, b.centre, sample.relation) else OUTCOMES[1]
    if a or b:
        others = [f for f in objects if f.cls not in (sample.first.cls, sample.second.cls)]
        return OUTCOMES[2] if others else OUTCOMES[3]
    return OUTCOMES[4]


def load_locator(path: str | Path) -> Locator:
    weights = Path(path).expanduser() / "locator.safetensors"
    if not weights.exists():
        raise UsageError(f"no locator in {str(path)!r}: train one with `python -m helpers.locator`")
    locator = Locator()
    locator.load_state_dict(load_file(str(weights)))
    return locator.eval()


# --------------------------------------------------------------------------- training


def accuracy_on_fresh_renders(
    locator: Locator, count: int = 512, first_seed: int = 7 * 10**8, vae=None
) -> dict[str, float]:
    """On unseen two-object renders (through ``vae`` if given): objects found, relations read, colours named right."""
    samples = [relations.relation_sample(s) for s in range(first_seed, first_seed + count)]
    images = [toyworld.render(s.scene, 64, seed) for s, seed in zip(samples, range(first_seed, first_seed + count))]
    if vae is not None:
        images = through_vae(vae, images)
    found = locate(locator, images)
    report = score_relations(found, samples)
    colours = [
        f.colour == inst.colour
        for objs, s in zip(found, samples)
        for inst in (s.first, s.second)
        for f in objs
        if f.cls == inst.cls
    ]
    report["colour_accuracy"] = sum(colours) / max(1, len(colours))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}


def train_locator(output: Path, steps: int, batch_size: int, seed: int, command: str) -> dict:
    """Train the locator and save it with its card into ``output``, which is replaced whole: new, empty
    or an earlier locator's (the shipped one's included), checked before the toy VAE is loaded."""
    from diffusers import AutoencoderKL

    output = check_output(output, TOOL, "--output", shipped_ok=True)
    torch.manual_seed(seed)
    locator = Locator()
    vae = AutoencoderKL.from_pretrained(TOY_MODEL, subfolder="vae").eval()

    def loss_at(step: int) -> torch.Tensor:
        base = 2 * 10**7 + seed * 10**6 + step * batch_size
        x, cls, colour = training_batch(range(base, base + batch_size), vae)
        cls_logits, colour_logits = locator(x)
        return F.cross_entropy(cls_logits, cls) + F.cross_entropy(colour_logits, colour, ignore_index=IGNORE)

    start = time.time()
    train_steps(locator, loss_at, steps, "locator")
    report = {
        "command": command,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "seconds": round(time.time() - start, 1),
        "fresh_two_object_renders": accuracy_on_fresh_renders(locator),
        "through_the_toy_vae": accuracy_on_fresh_renders(locator, vae=vae),
    }
    with building(output, TOOL, shipped_ok=True) as build:
        save_safetensors_atomic(locator.state_dict(), build / "locator.safetensors")
        write_text_atomic(build / "README.md", _card(report))
    return report


def _card(report: dict) -> str:
    plain, vae = report["fresh_two_object_renders"], report["through_the_toy_vae"]
    rows = "\n".join(f"| {k} | {v} | {vae[k]} |" for k, v in plain.items())
    return f"""# Toy locator

The toy judge's extension for spatial prompts: a {sum(p.numel() for p in Locator().parameters()):,}-parameter fully
convolutional network that predicts, for every {CELL} x {CELL} pixel cell of a 64 px toy image, the object class
there (or background) and its colour. Objects are read off that map as the cells of each class,
their centroid and their majority colour (`helpers.toy.locator.locate`).

Produced by `{report["command"]}` ({report["steps"]} steps of batch {report["batch_size"]}, seed
{report["seed"]}, fresh renders every step, half of them two-object scenes, half of all passed through the
toy model's VAE as generated images are; {report["seconds"]} s on a 2-core CPU).

On 512 fresh two-object renders (all class pairs), as rendered and after a round trip through the toy
model's VAE (encoded and decoded: the best the toy model could draw them):

| measure | rendered | through the VAE |
|---|---|---|
{rows}
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m helpers.locator", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DATA / "toy-locator")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    at_least("--steps", args.steps, 1)
    at_least("--batch_size", args.batch_size, 1)
    seed_in_range("--seed", args.seed)
    configure_cpu()
    command = "python -m helpers.locator " + " ".join(shlex.quote(a) for a in argv)
    print(json.dumps(train_locator(args.output, args.steps, args.batch_size, args.seed, command.strip())))
