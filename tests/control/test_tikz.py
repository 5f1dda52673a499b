"""The TikZ reader: the subset renders as written, anything else fails with its line and reason."""

import random
import re
import signal
from contextlib import contextmanager

import numpy as np
import pytest

from helpers.control import tikz


def _wrap(*lines: str) -> str:
    return "\n".join(["\\begin{tikzpicture}", *lines, "\\end{tikzpicture}"])


def _px(img, x, y):
    return tuple(np.asarray(img)[y, x])


def test_filled_rectangle_covers_its_corners_in_canvas_coordinates():
    img = tikz.render(_wrap("\\draw[fill=red] (0,0) rectangle (5,5);"), size=64)
    assert _px(img, 16, 48) == tikz.COLOURS["red"]  # lower left: y grows upward
    assert _px(img, 48, 16) == (255, 255, 255)
    assert _px(img, 48, 48) == (255, 255, 255)


def test_circle_ellipse_line_and_cycle():
    img = tikz.render(
        _wrap(
            "\\fill[blue] (5,5) circle (2);",
            "\\draw[green, very thick] (0,9) -- (10,9);",
            "\\filldraw[fill=yellow, draw=black] (1,1) -- (3,1) -- (2,3) -- cycle;",
            "\\draw[fill=pink] (8,2) ellipse (1.5 and 0.5);",
        ),
        size=64,
    )
    assert _px(img, 32, 32) == tikz.COLOURS["blue"] and _px(img, 32, 15) == (255, 255, 255)
    assert _px(img, 32, 6) == tikz.COLOURS["green"]
    assert _px(img, 12, 55) == tikz.COLOURS["yellow"]
    assert _px(img, 51, 51) == tikz.COLOURS["pink"] and _px(img, 51, 46) == (255, 255, 255)


def test_nodes_are_labels_with_positions_and_statements_may_span_lines():
    drawing = tikz.parse(
        _wrap(
            "% a dog on the left",
            "\\draw[fill=brown] (1,2)",
            "  rectangle (4,5);",
            "\\node[red] (a) at (2.5,5.5) {dog};",
            "\\node at (7,3) {cup};",
        )
    )
    assert drawing.labels == [("dog", (2.5, 5.5)), ("cup", (7.0, 3.0))]
    assert [s.kind for s in drawing.shapes] == ["rectangle", "node", "node"]
    assert drawing.shapes[0].line == 3


@pytest.mark.parametrize(
    "code, line, reason",
    [
        (_wrap("\\draw (0,0) -- (1,1);", "\\foreach \\x in {1,2} {}"), 3, "unsupported command '\\foreach'"),
        (_wrap("\\draw[dashed] (0,0) -- (1,1);"), 2, "unsupported option 'dashed'"),
        (_wrap("\\draw[fill=teal] (0,0) circle (1);"), 2, "unsupported option 'fill=teal'"),
        (_wrap("\\draw (0,0) circle (big);"), 2, "radius must be a number"),
        (_wrap("\\draw (0,0) -- (1,1)"), 2, "not ended with ';'"),
        (_wrap("\\draw (0,0);"), 2, "draws nothing"),
        (_wrap("\\draw (0,0) -- cycle;"), 2, "at least three points"),
        ("\\draw (0,0) -- (1,1);", 1, "before \\begin{tikzpicture}"),
        ("\\begin{tikzpicture}\n\\draw (0,0) -- (1,1);", 2, "missing \\end{tikzpicture}"),
        (_wrap("\\draw (0,0) -- (1e9,1);"), 2, "cannot read"),
        (_wrap("\\draw[line width=500pt] (0,0) -- (1,1);"), 2, "out of range"),
    ],
)
def test_invalid_code_names_the_line_and_the_reason(code, line, reason):
    with pytest.raises(tikz.TikzError) as err:
        tikz.parse(code)
    assert err.value.line == line and reason in err.value.reason
    assert str(err.value).startswith(f"line {line}: ")


def test_random_input_never_fails_with_anything_but_a_tikz_error():
    pieces = [
        "\\draw",
        "\\fill",
        "\\node",
        "\\filldraw",
        "[",
        "]",
        "fill=red",
        "blue",
        "thick",
        "(",
        ")",
        ",",
        "1",
        "-2.5",
        ".5",
        "--",
        "cycle",
        "rectangle",
        "circle",
        "ellipse",
        "and",
        "at",
        "{",
        "}",
        "dog",
        ";",
        "%",
        "\n",
        " ",
        "\\begin{tikzpicture}",
        "\\end{tikzpicture}",
        "(3,4)",
        "(0,0)",
        "line width=2pt",
    ]
    rng = random.Random(0)
    rendered = 0
    for _ in range(1500):
        body = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(0, 14)))
        code = _wrap(body) if rng.random() < 0.8 else body
        try:
            tikz.render(code, size=32)
            rendered += 1
        except tikz.TikzError as err:
            assert err.reason and err.line >= 0
    assert rendered > 50  # the fuzzer also produces valid drawings


def test_node_names_can_be_drawn_as_code_squares():
    from helpers.toy import world as toyworld

    codes = {cls: tikz.glyph(cls) for cls in toyworld.CLASSES}
    assert len({str(c) for c in codes.values()}) == len(codes)  # every toy class has its own code
    assert tikz.glyph("Dog ") == codes["dog"] and all(any(map(any, c)) for c in codes.values())
    code = "\\begin{tikzpicture}\n\\fill[red] (0,0) rectangle (10,10);\n\\node at (5,5) {dog};\n\\end{tikzpicture}"
    img = np.asarray(tikz.render(code, 64, labels="glyph"))
    # 2 px cells: a white margin cell around 3 x 3 code cells, centred on pixel (32, 32)
    left = top = 32 - 5
    for r in range(5):
        for c in range(5):
            inner = 1 <= r <= 3 and 1 <= c <= 3
            expected = (0, 0, 0) if inner and codes["dog"][r - 1][c - 1] else (255, 255, 255)
            assert tuple(img[top + 2 * r, left + 2 * c]) == expected, (r, c)
    assert tuple(img[top - 1, left - 1]) == tikz.COLOURS["red"]
    assert np.array_equal(np.asarray(tikz.render(code, 64, labels="none")), np.full((64, 64, 3), tikz.COLOURS["red"]))
    with pytest.raises(ValueError, match="labels must be one of text, glyph, none"):
        tikz.render(code, 64, labels="words")


@contextmanager
def _at_most(seconds: int):
    """Fail, by interrupting it, whatever runs longer than ``seconds``: a ceiling, not a benchmark."""

    def stop(*_):
        raise TimeoutError(f"still reading after {seconds} s: the reader is not linear in its input")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


MIB = 1 << 20
JUNK = {  # one MiB of what a broken or hostile planner might answer; each took seconds to hours before
    "digits in a point": ("\\draw (" + "1" * MIB + ";", "a path starts with a point"),
    "digits then junk in a step": ("\\draw (0,0) -- (" + "1" * MIB + "x;", "cannot read"),
    "digits as a radius": ("\\draw (0,0) circle (" + "1" * MIB + "x);", "radius must be a number"),
    "digits as a line width": ("\\draw[line width=" + "1" * MIB + "x] (0,0) -- (1,1);", "unsupported option"),
    "spaces in a node": ("\\node" + " " * MIB + "x;", "unsupported command '\\node'"),
    "ands in an ellipse": ("\\draw (0,0) ellipse (" + "and " * (MIB // 4) + ";", "cannot read"),
    "semicolons": ("\\draw (0,0) -- (1,1)" + ";" * MIB, None),
    "a statement over many lines": ("\\draw (0,0)\n" + "--(1,1)\n" * (MIB // 8) + ";", None),
    "a path of 300000 steps": ("\\draw (0,0)" + "--(1,1)" * (2 * MIB // 7) + ";", None),  # 2 MiB: 13 s before
}


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="needs SIGALRM to stop a runaway reader")
@pytest.mark.parametrize("name", JUNK)
def test_a_megabyte_of_junk_is_read_in_a_few_seconds_at_most(name):
    body, reason = JUNK[name]
    with _at_most(5):
        if reason is None:
            drawing = tikz.parse(_wrap(body))
            assert drawing.shapes[0].kind == "path" and len(drawing.shapes[0].points) == body.count("(1,1)") + 1
        else:
            with pytest.raises(tikz.TikzError, match=re.escape(reason)):
                tikz.parse(_wrap(body))


def test_statements_split_over_lines_and_shared_lines_read_as_before():
    drawing = tikz.parse(
        _wrap(
            "\\draw (0,0) -- (1,1); \\fill[red] (2,2)",
            "  circle (0.5); ; \\draw (0,0) ellipse (1.5 and 0.5) -- (1.,-.5)",
            "  rectangle (+2,3); \\node[blue]  (a)  at ( 4 , 5 )  {cup};",
        )
    )
    assert [(s.kind, s.points, s.radii, s.line) for s in drawing.shapes] == [
        ("path", [(0.0, 0.0), (1.0, 1.0)], (0.0, 0.0), 2),
        ("circle", [(2.0, 2.0)], (0.5, 0.5), 2),
        ("ellipse", [(0.0, 0.0)], (1.5, 0.5), 3),
        ("path", [(0.0, 0.0), (1.0, -0.5)], (0.0, 0.0), 3),
        ("rectangle", [(1.0, -0.5), (2.0, 3.0)], (0.0, 0.0), 3),
        ("node", [(4.0, 5.0)], (0.0, 0.0), 4),
    ]
    assert drawing.shapes[1].fill == tikz.COLOURS["red"] and drawing.labels == [("cup", (4.0, 5.0))]
    with pytest.raises(tikz.TikzError, match="line 2: an ellipse's x radius must be a number, got 'x'"):
        tikz.parse(_wrap("\\draw (0,0) ellipse (x and 1);"))
    with pytest.raises(tikz.TikzError, match=r"line 2: a coordinate 1000.5 is out of range"):
        tikz.parse(_wrap("\\draw (0,0) -- (1000.5,1);"))
