"""`python -m helpers.locator`: the command line of ``helpers.toy.locator``."""

from helpers.core.cli import run_main
from helpers.toy.locator import main

if __name__ == "__main__":
    run_main(main)
