"""Reading a learner's images: a "decompression bomb" (a small file that claims huge dimensions) is one line."""

import struct
import warnings
import zlib

import pytest
from PIL import Image

from helpers.core.errors import UsageError
from helpers.core.images import load_rgb
from helpers.evaluation import evaluate


def _huge_png(path, side: int) -> None:
    """A valid 1-bit PNG of ``side`` x ``side`` white pixels: a few KB on disk, side**2 pixels once read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\xff" * ((side + 7) // 8)  # filter byte, then the row's bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1 bit per pixel, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """A folder holding one 30000 x 30000 PNG, as the issue tried."""
    folder = tmp_path_factory.mktemp("huge")
    _huge_png(folder / "huge.png", 30000)
    return folder


def test_a_30000_px_png_is_one_line_naming_the_file_its_size_and_the_fix(huge):
    assert (huge / "huge.png").stat().st_size < 200_000
    with pytest.raises(UsageError, match=r"huge\.png has 900 megapixels, .*: resize it below 89 megapixels"):
        load_rgb(huge / "huge.png")


def test_the_warning_form_is_the_same_line_when_warnings_are_errors(tmp_path):
    path = tmp_path / "big.png"
    _huge_png(path, 10000)  # between PIL's warning (89 MP) and its error (179 MP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(UsageError, match=r"big\.png has 100 megapixels, .*: resize it below 89 megapixels"):
            load_rgb(path)


def test_a_command_reading_it_says_so_in_one_line(huge, one_line_error):
    line = one_line_error(evaluate.main, ["--images", str(huge), "--prompt", "a photo of a red dog"])
    assert "huge.png has 900 megapixels" in line
