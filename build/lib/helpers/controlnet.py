"""`python -m helpers.controlnet`: the command line of ``helpers.control.trainer``."""

from helpers.control.trainer import main
from helpers.core.cli import run_main

if __name__ == "__main__":
    run_main(main)
