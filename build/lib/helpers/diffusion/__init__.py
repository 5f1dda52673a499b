"""Pipelines and diffusion basics: the two profiles, loading, latents, the noising process, losses, LoRA, generation."""
