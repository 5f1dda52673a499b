"""What every trainer shares: the loop (accelerate, checkpoints, resume), optimizers, memory estimates."""
