"""A reader for the small subset of TikZ that layout planners write, rendered without LaTeX.

ControlGPT (Zhang et al., 2023) asks an LLM for TikZ code of a scene's layout, compiles it to a
sketch and hands the sketch to a ControlNet. Compiling TikZ needs a TeX installation that laptops
and CI do not have, and an LLM's code fails often enough that the paper feeds compiler errors back
for a retry. This module reads the subset planners use and draws it with PIL:

    \\begin{tikzpicture}
    \\draw[fill=red] (1,2) rectangle (4,5);          % a box
    \\draw[blue, thick] (7,3) circle (1.5);           % a circle (also: ellipse (1.5 and 1))
    \\draw (0,1) -- (10,1);                           % lines and polygons, -- ... -- cycle
    \\node at (2.5,5.5) {dog};                        % a label: the object's name
    \\end{tikzpicture}

Coordinates live on a 10 x 10 canvas, x to the right and y up, as in TikZ. Anything outside the
subset raises `TikzError` naming the line and the reason; that text is what goes back to the LLM.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from helpers.toy.world import COLOURS as WORLD_COLOURS

CANVAS = 10.0
GLYPH_CELLS = 3
LABEL_STYLES = ("text", "glyph", "none")
# TikZ's own black, white and grey; every other name in the toy world's palette, so that a sketch's
# box has the colour its object is drawn in.
COLOURS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    **{name: rgb for name, rgb in WORLD_COLOURS.items() if name not in ("black", "white")},
}
LINE_WIDTHS = {"thin": 0.4, "thick": 0.8, "very thick": 1.2, "ultra thick": 1.6}  # in pt, as TikZ
# Every pattern below reads each character once: no two quantifiers may match the same text one
# after the other (``\d+\.?\d*`` or ``\s*`` then an optional group then ``\s*`` did, and a planner's
# answer of 16 KiB of digits or spaces took seconds, quadratic in its length).
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
POINT = re.compile(rf"\(\s*({NUMBER})\s*,\s*({NUMBER})\s*\)")
NODE = re.compile(r"\\node\s*(?:\[([^\]]*)\]\s*)?(?:\(\w+\)\s*)?at\s*" + POINT.pattern + r"\s*\{([^{}]*)\}")
SPACE = re.compile(r"\s*")
COMMENT = re.compile(r"(?<!\\)%.*")
BEGIN = re.compile(r"\\begin\{tikzpicture\}(\[[^\]]*\])?")
COMMAND = re.compile(r"\\(draw|fill|filldraw|node)\b")
CYCLE = re.compile(r"--\s*cycle\b")
LINE_TO = re.compile(rf"--\s*{POINT.pattern}")
RECTANGLE = re.compile(rf"rectangle\s*{POINT.pattern}")
CIRCLE = re.compile(r"circle\s*\(([^)]*)\)")
ELLIPSE = re.compile(r"ellipse\s*\(([^)]*)\)")
RADII = re.compile(r"(.*)\band\b(.*)", flags=re.S)  # the last "and" splits, as in TikZ's (1.5 and 0.5)


class TikzError(ValueError):
    """Code outside the subset: ``line`` is 1-based, and the message says what is wrong there."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


@dataclass
class Shape:
    """One drawn thing, in canvas units: kind is rectangle, circle, ellipse, path or node."""

    kind: str
    points: list[tuple[float, float]]
    radii: tuple[float, float] = (0.0, 0.0)
    closed: bool = False
    draw: tuple[int, int, int] | None = (0, 0, 0)
    fill: tuple[int, int, int] | None = None
    width: float = 0.4
    text: str = ""
    line: int = 0


@dataclass
class Drawing:
    """A parsed picture: its shapes, in drawing order."""

    shapes: list[Shape] = field(default_factory=list)

    @property
    def labels(self) -> list[tuple[str, tuple[float, float]]]:
        """The node texts and where they sit: the object names a planner placed."""
        return [(s.text, s.points[0]) for s in self.shapes if s.kind == "node"]


def _options(text: str, line: int, command: str) -> tuple[tuple | None, tuple | None, float]:
    """``[fill=red, blue, thick]`` -> (draw colour, fill colour, width in pt)."""
    draw = (0, 0, 0) if command == "draw" else None
    fill = None
    width = LINE_WIDTHS["thin"]
    for raw in filter(None, (o.strip() for o in text.split(","))):
        key, _, value = (p.strip() for p in raw.partition("="))
        if raw in LINE_WIDTHS:
            width = LINE_WIDTHS[raw]
        elif key == "line width" and re.fullmatch(rf"({NUMBER})\s*pt", value):
            width = float(value.removesuffix("pt").strip())
            if not 0 < width <= 10:
                raise TikzError(line, f"line width {value} is out of range: use 0 to 10 pt")
        elif key in ("fill", "draw", "color") and value in COLOURS:
            if key == "fill":
                fill = COLOURS[value]
            else:
                draw = COLOURS[value]
        elif not value and raw in COLOURS:
            draw = COLOURS[raw]
            if command == "fill":
                fill = draw
        else:
            raise TikzError(
                line,
                f"unsupported option {raw!r}: use a colour ({', '.join(COLOURS)}), "
                f"fill=COLOUR, draw=COLOUR, {', '.join(LINE_WIDTHS)} or line width=Npt",
            )
    if command == "fill" and fill is None:
        fill = draw if draw is not None else (0, 0, 0)
    if command == "fill":
        draw = None
    return draw, fill, width


def _number(text: str, line: int, what: str) -> float:
    if not re.fullmatch(NUMBER, text.strip()):
        raise TikzError(line, f"{what} must be a number, got {text.strip()!r}")
    value = float(text)
    if not math.isfinite(value) or abs(value) > 1000:
        raise TikzError(line, f"{what} {text.strip()} is out of range")
    return value


def _coordinate(text: str, line: int) -> float:
    """A coordinate ``POINT`` already read as a number: only its range is left to check."""
    value = float(text)
    if abs(value) > 1000:  # also inf: a long enough string of digits overflows
        raise TikzError(line, f"a coordinate {text} is out of range")
    return value


def _point(m: re.Match, line: int) -> tuple[float, float]:
    return _coordinate(m[1], line), _coordinate(m[2], line)


def _path(body: str, line: int, draw, fill, width: float) -> list[Shape]:
    """A path: a start point, then ``-- (x,y)``, ``rectangle (x,y)``, ``circle (r)``,
    ``ellipse (rx and ry)`` or ``-- cycle`` steps. Read by position, never by slicing off what
    was read, so that a path of n steps costs n steps, not n times its length."""
    shapes, body = [], body.strip()
    first = POINT.match(body)
    if not first:
        raise TikzError(line, f"a path starts with a point like (1,2), got {body[:20]!r}")
    current = [_point(first, line)]
    pos = SPACE.match(body, first.end()).end()
    closed = False

    def flush() -> None:
        """End the polyline so far (a rectangle or circle step starts from its last point)."""
        if len(current) > 1:
            shapes.append(Shape("path", list(current), closed=closed, draw=draw, fill=fill, width=width, line=line))
        current[:] = current[-1:]

    while pos < len(body):
        if closed:
            raise TikzError(line, f"nothing may follow '-- cycle', got {body[pos : pos + 20]!r}")
        if m := CYCLE.match(body, pos):
            if len(current) < 3:
                raise TikzError(line, "'-- cycle' needs at least three points")
            closed = True
        elif m := LINE_TO.match(body, pos):
            current.append(_point(m, line))
        elif m := RECTANGLE.match(body, pos):
            flush()
            corner = _point(m, line)
            shapes.append(
                Shape("rectangle", [current[-1], corner], closed=True, draw=draw, fill=fill, width=width, line=line)
            )
            current[:] = [corner]
        elif m := CIRCLE.match(body, pos):
            flush()
            r = _number(m[1], line, "a circle's radius")
            shapes.append(Shape("circle", [current[-1]], (r, r), True, draw, fill, width, line=line))
        elif (m := ELLIPSE.match(body, pos)) and (radii := RADII.fullmatch(m[1])):
            flush()
            rx, ry = _number(radii[1], line, "an ellipse's x radius"), _number(radii[2], line, "an ellipse's y radius")
            shapes.append(Shape("ellipse", [current[-1]], (rx, ry), True, draw, fill, width, line=line))
        else:
            raise TikzError(
                line,
                f"cannot read {body[pos : pos + 24]!r}: a path continues with -- (x,y), rectangle (x,y), "
                f"circle (r), ellipse (rx and ry) or -- cycle",
            )
        pos = SPACE.match(body, m.end()).end()
    flush()
    if not shapes:
        raise TikzError(line, "the path draws nothing: add -- (x,y), rectangle (x,y) or circle (r)")
    return shapes


def _statement(text: str, line: int) -> list[Shape]:
    if m := NODE.fullmatch(text):
        draw, _, _ = _options(m[1] or "", line, "draw")
        at = (_number(m[2], line, "a coordinate"), _number(m[3], line, "a coordinate"))
        return [Shape("node", [at], draw=draw, text=m[4].strip(), line=line)]
    if m := re.fullmatch(r"\\(filldraw|draw|fill)\b\s*(?:\[([^\]]*)\])?\s*(.*)", text, flags=re.S):
        command = "draw" if m[1] == "filldraw" else m[1]
        draw, fill, width = _options(m[2] or "", line, command)
        if m[1] == "filldraw" and fill is None:
            fill = draw
        return _path(m[3], line, draw, fill, width)
    word = re.match(r"\\?[^\s\[\](){};]*", text)[0] or text[:10]
    raise TikzError(
        line, f"unsupported command '{word}': use \\draw, \\fill, \\filldraw or \\node ... at (x,y) {{text}}"
    )


def parse(code: str) -> Drawing:
    """Read TikZ code of the subset into shapes; raise `TikzError` at the first line outside it.

    A statement may span lines and a line may hold several: the lines of an unfinished statement
    are kept in a list and joined once at its ';', so the reading stays linear in the code's length."""
    if not isinstance(code, str):
        raise TikzError(0, f"expected TikZ code as text, got {type(code).__name__}")
    drawing, inside, ended = Drawing(), False, False
    pending: list[str] = []  # the pieces of a statement not yet ended by ';'
    start = 0
    lines = code.splitlines()
    for number, raw in enumerate(lines, start=1):
        text = (COMMENT.sub("", raw) if "%" in raw else raw).strip()
        if not text:
            continue
        if ended:
            raise TikzError(number, "code after \\end{tikzpicture}")
        if BEGIN.fullmatch(text):
            if inside:
                raise TikzError(number, "\\begin{tikzpicture} inside another tikzpicture")
            inside = True
            continue
        if not inside:
            raise TikzError(number, "code before \\begin{tikzpicture}")
        if text == "\\end{tikzpicture}":
            if pending:
                raise TikzError(start, "statement not ended with ';'")
            ended = True
            continue
        if not pending:
            start = number
            if not COMMAND.match(text):
                _statement(text, number)  # raises: an unsupported command, named at its own line
        *finished, rest = text.split(";")
        for piece in finished:
            statement = " ".join([*pending, piece]).strip()
            pending = []
            if statement:
                drawing.shapes += _statement(statement, start)
            start = number
        pending += [rest.strip()] if rest.strip() else []
    if not inside:
        raise TikzError(1, "no \\begin{tikzpicture} found")
    if not ended:
        raise TikzError(len(lines), "missing \\end{tikzpicture}")
    return drawing


def _px(point: tuple[float, float], size: int) -> tuple[float, float]:
    return point[0] / CANVAS * size, (1 - point[1] / CANVAS) * size


def glyph(word: str) -> list[list[bool]]:
    """A 3 x 3 bit code for a node's text, the same for the same word (case aside), never blank.

    A written word at 64 px is a few unreadable pixels; a code square drawn at the node is a label
    a small ControlNet can read, the way a map's legend turns symbols back into names.
    """
    digest = hashlib.sha256(word.strip().lower().encode()).digest()
    bits = [bool(digest[k] & 1) for k in range(GLYPH_CELLS**2)]
    if not any(bits):
        bits[GLYPH_CELLS**2 // 2] = True
    return [bits[r * GLYPH_CELLS : (r + 1) * GLYPH_CELLS] for r in range(GLYPH_CELLS)]


def _draw_glyph(pen: ImageDraw.ImageDraw, word: str, centre: tuple[float, float], size: int) -> None:
    cell = max(1, round(size / 32))
    side = (GLYPH_CELLS + 2) * cell  # one white cell of margin around the code
    left, top = round(centre[0] - side / 2), round(centre[1] - side / 2)
    pen.rectangle((left, top, left + side - 1, top + side - 1), fill=(255, 255, 255))
    for r, row in enumerate(glyph(word)):
        for c, bit in enumerate(row):
            if bit:
                x, y = left + (c + 1) * cell, top + (r + 1) * cell
                pen.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(0, 0, 0))


def render(
    drawing: Drawing | str, size: int = 64, background: tuple[int, int, int] = (255, 255, 255), labels: str = "text"
) -> Image.Image:
    """Draw the shapes at ``size`` pixels; node labels as ``text`` (PIL's default font), as a
    ``glyph`` code square (what the toy ControlNet reads), or ``none``."""
    if labels not in LABEL_STYLES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_STYLES)}, not {labels!r}")
    if isinstance(drawing, str):
        drawing = parse(drawing)
    img = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(img)
    for s in drawing.shapes:
        width = max(1, round(s.width / 0.4 * size / 64))
        if s.kind == "rectangle":
            (x0, y0), (x1, y1) = _px(s.points[0], size), _px(s.points[1], size)
            pen.rectangle(
                (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                fill=s.fill,
                outline=s.draw,
                width=width if s.draw else 0,
            )
        elif s.kind in ("circle", "ellipse"):
            (x, y), rx, ry = _px(s.points[0], size), s.radii[0] / CANVAS * size, s.radii[1] / CANVAS * size
            pen.ellipse(
                (x - abs(rx), y - abs(ry), x + abs(rx), y + abs(ry)),
                fill=s.fill,
                outline=s.draw,
                width=width if s.draw else 0,
            )
        elif s.kind == "path":
            pts = [_px(p, size) for p in s.points]
            if s.closed and s.fill is not None:
                pen.polygon(pts, fill=s.fill)
            if s.draw is not None:
                pen.line(pts + (pts[:1] if s.closed else []), fill=s.draw, width=width)
        elif s.kind == "node" and labels == "text" and s.text:
            x, y = _px(s.points[0], size)
            pen.text((x, y), s.text, fill=s.draw or (0, 0, 0), anchor="mm")
        elif s.kind == "node" and labels == "glyph" and s.text:
            _draw_glyph(pen, s.text, _px(s.points[0], size), size)
    return img
