"""Helpers for the course "DreamBooth, ControlNet and ControlGPT from the inside".

The notebooks stay short by importing the tested logic from here: `profiles` (toy model on a CPU
or SD 1.5 on a GPU), `toyworld` (the procedural world the toy model was trained on), `noise` and
`losses` (the maths of diffusion training), `priors` (class images), `train` (the DreamBooth
trainer), `controlnet` and `controlnet_train` (ControlNet), `planner`, `tikz` and `controlgpt`
(ControlGPT), `evaluate`, `metrics` and `locator` (fidelity, PRES, DIV, spatial relations),
`memory` (what fits a GPU), `viz`.
"""

import logging

# bitsandbytes logs at import time that its optional 4-bit CPU kernels are missing; the course uses
# none of them, and a learner's one-line error message should not come after that notice.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
