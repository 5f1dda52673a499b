"""Scoring images the DreamBooth paper's way: metrics, the evaluation command, photo scorers."""
