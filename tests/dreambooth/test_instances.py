"""Per-image captions: photo.txt beside photo.jpg replaces --instance_prompt for that photo."""

import shutil
import warnings

import pytest
import torch

from helpers.core.errors import UsageError
from helpers.core.paths import ROOT
from helpers.dreambooth.instances import load_instances
from helpers.dreambooth.step import Batch, condition
from helpers.dreambooth.trainer import TrainConfig, Trainer

SUBJECT = ROOT / "data" / "subjects" / "toy_dog"
PROMPT = "a photo of sks dog"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(SUBJECT.glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    return folder


def _first(folder):
    return sorted(folder.glob("*.png"))[0]


def test_a_caption_file_replaces_the_instance_prompt_for_its_photo_only(photos):
    _first(photos).with_suffix(".txt").write_text("a photo of sks dog\n on the beach \n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = load_instances(str(photos), 64, PROMPT, "a photo of dog")
    assert found.prompts == ["a photo of sks dog on the beach", PROMPT, PROMPT] and found.captioned == 1
    assert len(found.images) == 3


def test_a_caption_without_the_identifier_warns_and_an_empty_one_is_one_line(photos):
    caption = _first(photos).with_suffix(".txt")
    caption.write_text("a photo of a dog on the beach")
    with pytest.warns(UserWarning, match=r"does not name the identifier 'sks' .*add it to the caption$"):
        load_instances(str(photos), 64, PROMPT, "a photo of dog")
    caption.write_text("  \n")
    with pytest.raises(UsageError, match=r"caption file .* is empty: .* or delete it to use --instance_prompt$"):
        load_instances(str(photos), 64, PROMPT, "a photo of dog")


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_each_photo_trains_with_its_own_caption(photos, tmp_path, train_text_encoder):
    _first(photos).with_suffix(".txt").write_text("a photo of sks dog on the beach")
    trainer = Trainer(
        TrainConfig(
            instance_data_dir=str(photos),
            instance_prompt=PROMPT,
            output_dir=str(tmp_path / "out"),
            max_train_steps=1,
            progress=False,
            train_text_encoder=train_text_encoder,
        )
    )
    result = trainer.train()
    assert result.captioned_images == 1
    ids = trainer.tokenizer(["a photo of sks dog on the beach", PROMPT], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        expected = trainer.text_encoder(ids.input_ids)[0]
        none = torch.zeros(0)
        rows = Batch(torch.tensor([0, 1, 2]), torch.zeros(0, dtype=torch.long), none, none, none)
        got = condition(trainer.data, trainer.text_encoder, rows)
    assert torch.allclose(got[0], expected[0], atol=1e-5) and torch.allclose(got[1], expected[1], atol=1e-5)
    assert torch.allclose(got[1], got[2]) and not torch.allclose(got[0], got[1])
