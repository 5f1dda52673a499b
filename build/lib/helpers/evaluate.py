"""`python -m helpers.evaluate`: the command line of ``helpers.evaluation.evaluate``."""

from helpers.core.cli import run_main
from helpers.evaluation.evaluate import main

if __name__ == "__main__":
    run_main(main)
