import pytest
from PIL import Image

from helpers.core.errors import UsageError
from helpers.core.images import load_image_folder


def test_missing_empty_and_non_folder(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(UsageError, match="holds no images"):
        load_image_folder(tmp_path)
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(UsageError, match="is not a folder"):
        load_image_folder(tmp_path / "f.png")


def test_corrupt_file_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(UsageError, match=r"cannot read image .*b\.jpg"):
        load_image_folder(tmp_path)


def test_modes_become_rgb_and_exif_rotation_is_applied(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "a_rgba.png")
    Image.new("L", (4, 4), 128).save(tmp_path / "b_grey.png")
    Image.new("P", (4, 4)).save(tmp_path / "c_palette.png")
    tall = Image.new("RGB", (10, 20), (0, 0, 255))
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tall.save(tmp_path / "d_rotated.jpg", exif=exif)
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    images = load_image_folder(tmp_path)
    assert [im.mode for im in images] == ["RGB"] * 4
    assert images[0].getpixel((0, 0)) == (255, 255, 255)  # transparent pixels composited onto white
    assert images[3].size == (20, 10)
