"""Helpers for the course "DreamBooth, ControlNet and ControlGPT from the inside".

The notebooks stay short by importing tested code from here, one subpackage per part of the
course: ``core``, ``toy``, ``diffusion``, ``training``, ``dreambooth``, ``evaluation``, ``control``,
``upscaler`` and ``course``. ``helpers/README.md`` draws how they depend on each other and lists
the modules each notebook uses. The modules left at this level are the commands the README
documents (``python -m helpers.pretrain``, ...), each a thin entry to the module that does the work.
"""

import logging

# bitsandbytes logs at import time that its optional 4-bit CPU kernels are missing; the course uses
# none of them, and a learner's one-line error message should not come after that notice.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
