"""`python -m helpers.generate`: the command line of ``helpers.diffusion.generate``."""

from helpers.core.cli import run_main
from helpers.diffusion.generate import main

if __name__ == "__main__":
    run_main(main)
