"""Helpers for the course "DreamBooth, ControlNet and ControlGPT from the inside".

The notebooks stay short by importing the tested logic from here: `profiles` (toy model on a CPU
or SD 1.5 on a GPU), `toyworld` (the procedural world the toy model was trained on), `noise` and
`losses` (the maths of diffusion training), `priors` (class images), `train` (the DreamBooth
trainer), `evaluate` and `metrics` (fidelity, PRES, DIV), `memory` (what fits a GPU), `viz`.
"""
