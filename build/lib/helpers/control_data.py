"""`python -m helpers.control_data`: the command line of ``helpers.control.dataset``."""

from helpers.control.dataset import main
from helpers.core.cli import run_main

if __name__ == "__main__":
    run_main(main)
