import itertools

import pytest
import torch
from torch.nn import functional as F

from helpers.evaluation import metrics
from helpers.toy.judge import Verdict


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
    verdict = Verdict(
        torch.zeros(4, 2), {"class": ["dog", "dog", "cat", "dog"], "colour": ["red", "blue", "red", "red"]}
    )
    out = metrics.prompt_fidelity(verdict, {"class": "dog", "colour": "red", "position": None})
    assert out["class_accuracy"] == 0.75 and out["colour_accuracy"] == 0.75
    assert out["prompt_fidelity"] == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    only_class = metrics.prompt_fidelity(verdict, {"class": "dog", "colour": None})
    assert only_class["prompt_fidelity"] == 0.75 and "colour_accuracy" not in only_class
    with pytest.raises(ValueError, match="names no toy class or colour"):
        metrics.prompt_fidelity(verdict, {"class": None, "colour": None})
    snowy = Verdict(verdict.embeddings, verdict.labels | {"background": ["snow", "beach", "snow", "snow"]})
    in_snow = metrics.prompt_fidelity(snowy, {"class": "dog", "colour": None, "background": "snow"})
    assert in_snow["background_accuracy"] == 0.75 and in_snow["prompt_fidelity"] == pytest.approx(
        (1 + 0.5 + 0.5 + 1) / 4
    )


def _gaussian(n: int, mean: list[float], std: list[float], seed: int) -> torch.Tensor:
    x = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0)  # exact sample moments, so the closed form applies exactly
    return x * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)


def test_frechet_distance_of_independent_axes_is_the_closed_form():
    # For diagonal covariances: sum over axes of (m_a - m_b)^2 + (s_a - s_b)^2.
    a = _gaussian(4000, [0.0, 1.0], [1.0, 2.0], seed=0)
    b = _gaussian(4000, [3.0, 1.0], [2.0, 2.0], seed=1)
    # the sample axes are not exactly uncorrelated, so allow what 4000 samples leave
    assert metrics.frechet_distance(a, b) == pytest.approx(3.0**2 + 1.0**2, abs=0.05)


def test_frechet_distance_is_zero_for_one_set_and_symmetric():
    a, b = torch.randn(64, 8), torch.randn(64, 8) + 0.5
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-6)


def test_frechet_distance_needs_two_samples():
    with pytest.raises(ValueError, match="at least two"):
        metrics.frechet_distance(torch.randn(1, 4), torch.randn(5, 4))


def test_half_spread_is_half_the_range_of_the_seeds_values():
    assert metrics.half_spread([0.8, 0.7, 0.9]) == pytest.approx(0.1)
    assert metrics.half_spread(iter([0.5])) == 0.0
