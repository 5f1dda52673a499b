import random

import numpy as np
import torch

from helpers.diffusion.latents import through_vae
from helpers.toy import world as toyworld
from helpers.toy.judge import judge_accuracy, judge_images, vae_share


def test_judge_knows_fresh_renders(judge):
    acc = judge_accuracy(judge, count=256, first_seed=7 * 10**8)
    assert acc["class"] >= 0.95 and acc["colour"] >= 0.9 and acc["position"] >= 0.9


def test_embeddings_are_unit_vectors_and_deterministic(judge):
    images = [toyworld.render(toyworld.random_sample(s).scene, seed=s) for s in range(4)]
    a, b = judge_images(judge, images), judge_images(judge, images)
    assert torch.allclose(a.embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.equal(a.embeddings, b.embeddings)


def test_views_of_one_subject_are_closer_than_other_instances_of_its_class(judge):
    rng = random.Random(3)
    subject = toyworld.random_instance(rng, cls="dog")
    others = [toyworld.random_instance(rng, cls="dog") for _ in range(8)]
    views = judge_images(judge, toyworld.subject_views(subject, 6, seed=5)).embeddings
    strangers = judge_images(judge, [toyworld.subject_views(o, 1, seed=9)[0] for o in others]).embeddings
    same = (views @ views.T)[~torch.eye(6, dtype=bool)].mean()
    different = (views @ strangers.T).mean()
    assert same > different + 0.2


def test_judge_reads_images_as_the_toy_vae_returns_them(judge, toy_vae):
    acc = judge_accuracy(judge, count=256, first_seed=7 * 10**8, vae=toy_vae)
    assert acc["class"] >= 0.95 and acc["colour"] >= 0.85


def test_vae_share_passes_a_seeded_half_through_the_vae(toy_vae):
    seeds = range(100, 116)
    images = [toyworld.render(toyworld.random_sample(s).scene, seed=s) for s in seeds]
    assert vae_share(None, images, seeds) == images
    mixed = vae_share(toy_vae, images, seeds)
    changed = [a.tobytes() != b.tobytes() for a, b in zip(images, mixed)]
    assert 4 <= sum(changed) <= 12
    assert changed == [a.tobytes() != b.tobytes() for a, b in zip(images, vae_share(toy_vae, images, seeds))]
    expected = through_vae(toy_vae, [images[changed.index(True)]])[0]
    diff = np.abs(np.asarray(mixed[changed.index(True)], np.int16) - np.asarray(expected, np.int16))
    assert diff.max() <= 2
