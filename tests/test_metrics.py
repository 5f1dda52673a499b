import itertools

import pytest
import torch
from torch.nn import functional as F

from helpers import metrics
from helpers.judge import Verdict


def test_diversity_matches_the_pairwise_definition():
    torch.manual_seed(0)
    e = torch.randn(6, 16)
    n = F.normalize(e, dim=-1)
    pairs = [1 - (n[i] @ n[j]).item() for i, j in itertools.permutations(range(6), 2)]
    assert metrics.diversity(e) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)


def test_diversity_of_identical_samples_is_zero():
    assert metrics.diversity(torch.ones(4, 8)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        metrics.diversity(torch.ones(1, 8))


def test_subject_fidelity_is_mean_cosine():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert metrics.subject_fidelity(a, b) == pytest.approx(0.5)


def test_prompt_fidelity_averages_named_attributes():
    verdict = Verdict(torch.zeros(4, 2), {"class": ["dog", "dog", "cat", "dog"], "colour": ["red", "blue", "red", "red"]})
    out = metrics.prompt_fidelity(verdict, {"class": "dog", "colour": "red", "position": None})
    assert out["class_accuracy"] == 0.75 and out["colour_accuracy"] == 0.75
    assert out["prompt_fidelity"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    only_class = metrics.prompt_fidelity(verdict, {"class": "dog", "colour": None})
    assert only_class["prompt_fidelity"] == 0.75 and "colour_accuracy" not in only_class
    with pytest.raises(ValueError, match="names no toy class or colour"):
        metrics.prompt_fidelity(verdict, {"class": None, "colour": None})
