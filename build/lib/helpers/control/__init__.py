"""ControlNet and ControlGPT: the conditioning dataset, the model and its trainer, TikZ, planners."""
