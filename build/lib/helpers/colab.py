"""`python -m helpers.colab`: the command line of ``helpers.course.colab``."""

from helpers.core.cli import run_main
from helpers.course.colab import main

if __name__ == "__main__":
    run_main(main)
