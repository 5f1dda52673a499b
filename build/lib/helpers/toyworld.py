"""`python -m helpers.toyworld`: the command line of ``helpers.toy.world``."""

from helpers.core.cli import run_main
from helpers.toy.world import main

if __name__ == "__main__":
    run_main(main)
