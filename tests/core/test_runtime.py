"""Process-wide helpers: what a notebook parks while a fine-tune runs, and which profile it gets."""

import pytest

from helpers.core.runtime import parked
from helpers.diffusion.profiles import SD15, TOY, choose_profile, native_resolution


class Part:
    def __init__(self) -> None:
        self.moves: list[str] = []

    def to(self, device: str) -> "Part":
        self.moves.append(device)
        return self


def test_parked_parts_wait_on_the_cpu_and_come_back_even_after_an_error():
    base, scorers = Part(), Part()
    with parked(base, scorers, device="cuda"):
        assert base.moves == scorers.moves == ["cpu"]
    assert base.moves == scorers.moves == ["cpu", "cuda"]
    with pytest.raises(RuntimeError), parked(base, device="cuda"):
        raise RuntimeError("a fine-tune that fails")
    assert base.moves[-1] == "cuda"


def test_a_profile_object_is_taken_as_it_is_and_names_are_looked_up():
    assert choose_profile(TOY) is TOY and choose_profile("toy") is TOY
    assert SD15.mixed_precision == "fp16" and TOY.mixed_precision == "no" and SD15.dino_model and SD15.clip_model


def test_native_resolution_is_the_latent_size_times_the_vae_factor(sd_folders):
    assert native_resolution(str(sd_folders.fp16), 512) == 64  # 8 x 8 latents, an 8x VAE
    assert native_resolution(TOY.model, 512) == 64  # 16 x 16 latents, a 4x VAE
    assert native_resolution(SD15.model, 512) == 512  # a hub id: the profile's value


def test_warnings_print_as_one_line_without_the_helpers_source():
    import warnings

    from helpers.core.runtime import one_line_warning

    text = one_line_warning(
        UserWarning("identifier 'blue' is a common token"), UserWarning, "/x/train.py", 147, "self._load_models()"
    )
    assert text == "UserWarning: identifier 'blue' is a common token\n"
    saved = warnings.formatwarning
    try:
        from helpers.core.runtime import configure_cpu

        configure_cpu()
        assert warnings.formatwarning is one_line_warning
    finally:
        warnings.formatwarning = saved
