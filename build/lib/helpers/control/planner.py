"""Layout planners for ControlGPT: a prompt in, TikZ code of the scene's layout out.

ControlGPT (Zhang et al., 2023) asks GPT-4 to "draw" the prompt as TikZ, then renders that code
into the sketch a ControlNet follows. Two planners share one interface here:

- `ChatPlanner`: any OpenAI-compatible chat endpoint (``CONTROLGPT_BASE_URL``,
  ``CONTROLGPT_API_KEY``, ``CONTROLGPT_MODEL``), with a prompt in the paper's style. Never needed
  for CI or the toy course.
- `RuleBasedPlanner`: a deterministic, offline **rule-based stand-in, not an LLM**: it parses the
  prompt's two objects and their spatial relation and writes the same kind of TikZ.

`plan` validates the code with `helpers.control.tikz` and, as the paper does, sends the reader's error
back to the planner for another try.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from helpers.control import tikz
from helpers.core.errors import UsageError
from helpers.toy import world as toyworld
from helpers.toy.relations import CENTRES, RELATIONS

# Width and height (canvas units, 10 x 10) of each class's box in a two-object toy scene: the
# proportions an LLM knows from the world (a tree is taller than wide, sunglasses are flat), here
# the medians of 800 toy renders (`relations.typical_box_sizes`, checked by a test).
CLASS_BOXES = {
    "dog": (3.6, 2.5),
    "cat": (2.8, 2.7),
    "sunglasses": (3.8, 1.4),
    "cup": (3.0, 2.7),
    "house": (3.3, 3.1),
    "tree": (3.1, 3.4),
    "car": (3.8, 2.3),
    "flower": (2.5, 3.8),
}
SYSTEM_PROMPT = (
    """You draw layouts of images as TikZ code on a 10 x 10 canvas (x to the right, y up).
Draw each object the prompt names as a rectangle where it should appear, filled with its colour,
and put a \\node at the rectangle's centre whose text is the object's name. Use only \\draw,
\\fill, \\filldraw and \\node ... at (x,y) {name}; colours: """
    + ", ".join(tikz.COLOURS)
    + """.
Answer with the code alone, from \\begin{tikzpicture} to \\end{tikzpicture}."""
)


@dataclass(frozen=True)
class Thing:
    """One object of a prompt: its class noun and, if named, its colour."""

    cls: str
    colour: str | None = None

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.cls}" if self.colour else self.cls


def parse_relation_prompt(prompt: str) -> tuple[Thing, str, Thing]:
    """ "a red dog to the left of a blue cup" -> (Thing(dog, red), "left", Thing(cup, blue))."""
    text = " ".join(prompt.lower().replace(",", " ").split())
    for phrase, relation in RELATIONS.items():
        if f" {phrase} " in f" {text} ":
            first, second = text.split(phrase, 1)
            return _thing(first, prompt), relation, _thing(second, prompt)
    raise UsageError(
        f"no spatial relation in {prompt!r}: say 'A to the left of B', 'to the right of', 'above' or 'below'"
    )


def _thing(words: str, prompt: str) -> Thing:
    found = toyworld.parse_prompt(words)
    if found["class"] is None:
        raise UsageError(
            f"no object class in {words.strip()!r} of {prompt!r}: name one of {', '.join(toyworld.CLASSES)}"
        )
    return Thing(found["class"], found["colour"])


class Planner(Protocol):
    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        """TikZ code for ``prompt``; ``feedback`` is the reader's error on the previous answer."""


class RuleBasedPlanner:
    """A deterministic stand-in for the LLM (not one): two objects, four relations, one box per
    object at the relation's place, with its class's usual proportions."""

    name = "rule-based (not an LLM)"

    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        first, relation, second = parse_relation_prompt(prompt)
        lines = ["\\begin{tikzpicture}", f"% {prompt}"]
        for thing, (x, y) in zip((first, second), CENTRES[relation]):
            (w, h), cx, cy = CLASS_BOXES[thing.cls], x * tikz.CANVAS, (1 - y) * tikz.CANVAS  # TikZ's y points up
            x0, y0, x1, y1 = (round(v, 2) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            fill = thing.colour or "gray"
            lines.append(f"\\draw[fill={fill}] ({x0},{y0}) rectangle ({x1},{y1});")
            lines.append(f"\\node at ({round(cx, 2)},{round(cy, 2)}) {{{thing.cls}}};")
        lines.append("\\end{tikzpicture}")
        return "\n".join(lines)


class ChatPlanner:
    """An OpenAI-compatible chat endpoint as the planner, in the paper's manner."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, model: str | None = None, timeout: float = 60.0
    ) -> None:
        self.base_url = (base_url or os.environ.get("CONTROLGPT_BASE_URL", "")).rstrip("/")
        self.api_key = api_key or os.environ.get("CONTROLGPT_API_KEY", "")
        self.model = model or os.environ.get("CONTROLGPT_MODEL", "")
        self.timeout = timeout
        if not self.base_url or not self.model:
            raise UsageError(
                "the chat planner needs CONTROLGPT_BASE_URL (for example https://api.openai.com/v1) "
                "and CONTROLGPT_MODEL set; use the rule-based planner offline"
            )
        self.name = f"chat: {self.model}"

    def __call__(self, prompt: str, feedback: str | None = None) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        if feedback:
            messages.append({"role": "user", "content": f"Your code failed: {feedback}. Write it again."})
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=body,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())["choices"][0]["message"]["content"]
        except (OSError, KeyError, IndexError, ValueError) as err:
            raise UsageError(f"the chat planner at {self.base_url} failed: {err}") from None
        return extract_code(answer)


def extract_code(answer: str) -> str:
    """The tikzpicture of a chat answer, with any Markdown fence or prose around it dropped."""
    m = re.search(r"\\begin\{tikzpicture\}.*?\\end\{tikzpicture\}", answer, flags=re.S)
    return m[0] if m else answer.strip()


@dataclass
class Plan:
    """A planner's accepted answer: the code, the drawing read from it, and the attempts it took."""

    code: str
    drawing: tikz.Drawing
    attempts: int
    errors: list[str]


def follows_prompt(drawing: tikz.Drawing, prompt: str) -> bool:
    """Whether a layout names the prompt's two objects, in order, placed as its relation says (on the
    TikZ canvas y points up): what a planner, rule-based or an LLM, must get right before any drawing."""
    first, relation, second = parse_relation_prompt(prompt)
    if [name for name, _ in drawing.labels[:2]] != [first.cls, second.cls]:
        return False
    (_, (x1, y1)), (_, (x2, y2)) = drawing.labels[:2]
    return {"left": x1 < x2, "right": x1 > x2, "above": y1 > y2, "below": y1 < y2}[relation]


def plan(planner: Planner, prompt: str, max_attempts: int = 3) -> Plan:
    """Ask ``planner`` for TikZ until `helpers.control.tikz` reads it, feeding each error back."""
    errors: list[str] = []
    for attempt in range(1, max_attempts + 1):
        code = planner(prompt, errors[-1] if errors else None)
        try:
            return Plan(code, tikz.parse(code), attempt, errors)
        except tikz.TikzError as err:
            errors.append(str(err))
    raise UsageError(f"no readable TikZ for {prompt!r} after {max_attempts} attempts; last error: {errors[-1]}")
