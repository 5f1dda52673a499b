"""DINO and CLIP-T scoring of real photos, on tiny randomly initialised models saved locally (no hub)."""

import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import CLIPModel, CLIPProcessor, ViTImageProcessor, ViTModel

from helpers.core.errors import UsageError
from helpers.diffusion.generate import generate_images
from helpers.evaluation import metrics, photo_scorers
from helpers.evaluation.evaluate import evaluate_model
from helpers.evaluation.evaluate import photo_scorers as make_photo_scorers
from helpers.toy import world as toyworld


@pytest.fixture(scope="module")
def tiny_dino(sd_folders):
    return str(sd_folders.dino)


@pytest.fixture(scope="module")
def tiny_clip(sd_folders):
    return str(sd_folders.clip)


def _photos(n: int) -> list[Image.Image]:
    return [toyworld.render(toyworld.random_sample(s).scene, seed=s) for s in range(n)]


def test_dino_embedding_is_the_cls_token(tiny_dino):
    embed = photo_scorers.DinoEmbedder(tiny_dino)
    photos = _photos(3)
    rows = embed(photos)
    assert rows.shape == (3, 32)
    model = ViTModel.from_pretrained(tiny_dino, add_pooling_layer=False).eval()
    pixels = ViTImageProcessor.from_pretrained(tiny_dino)(images=photos, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(rows, expected)


def test_dino_batches_agree_with_one_batch(tiny_dino, monkeypatch):
    embed = photo_scorers.DinoEmbedder(tiny_dino)
    photos = _photos(5)
    whole = embed(photos)
    monkeypatch.setattr(photo_scorers, "BATCH", 2)
    torch.testing.assert_close(embed(photos), whole)


def test_dino_reads_greyscale_and_rgba_photos(tiny_dino):
    photo = _photos(1)[0]
    rows = photo_scorers.DinoEmbedder(tiny_dino)([photo.convert("L"), photo.convert("RGBA")])
    assert rows.shape == (2, 32) and torch.isfinite(rows).all()


def test_clip_t_is_the_cosine_of_image_and_prompt_features(tiny_clip):
    photos = _photos(3)
    scores = photo_scorers.ClipTextScorer(tiny_clip)(photos, "a photo of a red dog")
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        inputs = processor(text=["a photo of a red dog"], images=photos, return_tensors="pt", padding=True)
        out = model(**inputs)
    expected = F.cosine_similarity(out.image_embeds, out.text_embeds).tolist()
    assert scores == pytest.approx(expected, abs=1e-5)
    assert all(-1 <= s <= 1 for s in scores)


def test_a_missing_scorer_model_is_one_clear_line(tmp_path):
    with pytest.raises(UsageError, match="could not load the DINO .*helpers.profiles download"):
        photo_scorers.DinoEmbedder(str(tmp_path / "no-such-dino"))


def test_evaluate_model_with_photo_scorers(toy_pipe, tiny_dino, tiny_clip):
    scorers = make_photo_scorers(tiny_dino, tiny_clip)
    photos = _photos(2)
    report = evaluate_model(
        toy_pipe, photos, "a photo of sks dog", "a photo of dog", num_samples=3, scorers=scorers, num_inference_steps=2
    )
    assert report["scorers"].startswith("DINO") and report["num_samples"] == 3
    samples = generate_images(toy_pipe, "a photo of sks dog", 3, seed=0, num_inference_steps=2, guidance_scale=4.0)
    expected = metrics.subject_fidelity(scorers.embed(samples), scorers.embed(photos))
    assert report["subject_fidelity"] == pytest.approx(expected, abs=1e-4)
    assert report["prompt_fidelity"] == pytest.approx(scorers.prompt_fidelity(samples, "a photo of sks dog"), abs=1e-4)
    assert 0 <= report["div"] <= 2


def test_evaluate_model_keeps_the_class_samples_it_scored_when_asked(toy_pipe, tiny_dino, tiny_clip):
    scorers = make_photo_scorers(tiny_dino, tiny_clip)
    kw = dict(num_samples=2, seeds=(0, 1), scorers=scorers, num_inference_steps=2)
    report = evaluate_model(toy_pipe, _photos(2), "a photo of sks dog", "a photo of dog", keep_class_samples=True, **kw)
    assert "class_samples" not in evaluate_model(toy_pipe, _photos(2), "a photo of sks dog", "a photo of dog", **kw)
    expected = [
        img
        for seed in (0, 1)
        for img in generate_images(toy_pipe, "a photo of dog", 2, seed=seed * 10_000, num_inference_steps=2)
    ]
    assert [list(a.getdata()) for a in report["class_samples"]] == [list(b.getdata()) for b in expected]
    per_seed = [metrics.diversity(scorers.embed(expected[i : i + 2])) for i in (0, 2)]
    assert report["div"] == pytest.approx(sum(per_seed) / 2, abs=1e-4)
