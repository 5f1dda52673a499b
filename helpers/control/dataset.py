"""The toy conditioning dataset for ControlNet: (layout sketch, scene, prompt) triples.

In the spirit of diffusers' fill50k example, each row pairs a structure image with the image that
should be drawn from it and a caption. Here the structure is the scene's true layout in the
planners' TikZ (a box per object, filled with its colour) and the caption names the objects and
their relation, which is how the sketch is grounded: the prompt says which colour is which class.

    python -m helpers.control_data --output outputs/control-data --count 2000

The folder holds ``images/``, ``conditioning_images/`` and ``train.jsonl`` whose columns
(``image``, ``conditioning_image``, ``text``) are the defaults of diffusers'
``train_controlnet.py``, so the same data also feeds that script. Held-out class pairs
(`relations.HELD_OUT_PAIRS`) never appear.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from helpers.control import tikz
from helpers.core.atomic import write_text_atomic
from helpers.core.errors import UsageError
from helpers.core.folders import building, check_output
from helpers.core.images import load_rgb
from helpers.core.numbers import seed_in_range
from helpers.toy import relations
from helpers.toy import world as toyworld

SIZE = 64
DESCRIPTION = "dataset.json"  # how the folder was made, quoted by the ControlNet's model card
TOOL = "helpers.control_data"


@dataclass(frozen=True)
class Row:
    """One training example: what to draw, from which sketch, for which prompt."""

    image: Image.Image
    conditioning_image: Image.Image
    text: str


def make_row(seed: int, pairs: list[tuple[str, str]] | None = None) -> Row:
    """A two-object scene from the training pairs, its true-layout sketch and its prompt."""
    sample = relations.relation_sample(seed, pairs if pairs is not None else relations.train_pairs())
    image = toyworld.render(sample.scene, SIZE, seed)
    sketch = tikz.render(relations.layout_code(sample, SIZE, seed), SIZE, labels="glyph")
    return Row(image, sketch, sample.prompt)


def write_dataset(output: str | Path, count: int, seed: int = 0, progress: bool = True) -> Path:
    """Render ``count`` rows into ``output``, built aside and swapped in whole. Only a new or empty folder,
    or one this command made, is accepted, and that before any rendering: ``--output .`` must not wipe
    the learner's working folder."""
    if count < 1:
        raise UsageError(f"--count must be a positive number of rows, got {count}")
    given, output = str(output), check_output(output, TOOL, "--output")
    with building(output, TOOL) as build:
        _write_rows(build, given, count, seed, progress)
    return output


def _write_rows(build: Path, given: str, count: int, seed: int, progress: bool) -> None:
    """The images, ``train.jsonl`` and the description of the command (``given`` is its ``--output``)."""
    for sub in ("images", "conditioning_images"):
        (build / sub).mkdir()
    lines = []
    for k in tqdm(range(count), desc="control data", disable=not progress):
        row = make_row(seed + k)
        name = f"{k:05d}.png"
        row.image.save(build / "images" / name)
        row.conditioning_image.save(build / "conditioning_images" / name)
        lines.append(
            json.dumps(
                {"image": f"images/{name}", "conditioning_image": f"conditioning_images/{name}", "text": row.text}
            )
        )
    write_text_atomic(build / "train.jsonl", "\n".join(lines) + "\n")
    command = f"python -m helpers.control_data --output {shlex.quote(given)} --count {count} --seed {seed}"
    write_text_atomic(build / DESCRIPTION, json.dumps({"count": count, "seed": seed, "command": command}))


@dataclass(frozen=True)
class Entry:
    """One row of an index: where its two images are, and its caption (images are read when needed)."""

    image: Path
    conditioning_image: Path
    text: str

    def load(self) -> Row:
        return Row(load_rgb(self.image), load_rgb(self.conditioning_image), self.text)


def read_index(
    folder: str | Path,
    image_column: str = "image",
    conditioning_image_column: str = "conditioning_image",
    caption_column: str = "text",
) -> list[Entry]:
    """The rows of a fill50k-style folder (``train.jsonl`` beside the images), checked but not loaded."""
    folder = Path(folder).expanduser()
    index = folder / "train.jsonl"
    if not index.exists():
        raise UsageError(f"no train.jsonl in {str(folder)!r}: write one with `python -m helpers.control_data`")
    columns = (image_column, conditioning_image_column, caption_column)
    entries = []
    for number, line in enumerate(index.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            image, conditioning_image, text = (row[c] for c in columns)
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(
                f"{index}, line {number}: not a row with the columns {', '.join(columns)} "
                f"({type(err).__name__}: {err}); name the columns with --image_column, "
                "--conditioning_image_column and --caption_column"
            ) from None
        entries.append(Entry(folder / image, folder / conditioning_image, str(text)))
    if not entries:
        raise UsageError(f"{index} has no rows")
    return entries


def load_dataset(folder: str | Path) -> list[Row]:
    """Every row of a folder, images loaded."""
    return [entry.load() for entry in read_index(folder)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helpers.control_data", description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seed_in_range("--seed", args.seed)
    print(write_dataset(args.output, args.count, args.seed))
