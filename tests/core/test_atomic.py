import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers.core import atomic


def test_text_write_replaces_whole_file(tmp_path):
    path = tmp_path / "manifest.json"
    atomic.write_text_atomic(path, "old")
    atomic.write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    atomic.save_safetensors_atomic({"w": torch.ones(3)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of writing

    monkeypatch.setattr(atomic, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic.save_safetensors_atomic({"w": torch.zeros(3)}, path)
    assert torch.equal(load_file(str(path))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no half-written temporary file left


def test_an_image_is_saved_whole_in_the_format_its_suffix_names(tmp_path):
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    atomic.save_image_atomic(image, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as saved:
        assert saved.format == "PNG" and saved.size == (4, 2) and saved.getpixel((3, 1)) == (10, 20, 30)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
