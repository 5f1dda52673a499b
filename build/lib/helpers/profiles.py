"""`python -m helpers.profiles`: the command line of ``helpers.diffusion.profiles``."""

from helpers.core.cli import run_main
from helpers.diffusion.profiles import main

if __name__ == "__main__":
    run_main(main)
