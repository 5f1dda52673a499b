"""The toy world and its models: the renderer, two-object relations, tokenizer, toy Stable
Diffusion, judge, locator, and their pretraining."""
