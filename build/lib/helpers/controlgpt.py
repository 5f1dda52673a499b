"""`python -m helpers.controlgpt`: the command line of ``helpers.control.controlgpt``."""

from helpers.control.controlgpt import main
from helpers.core.cli import run_main

if __name__ == "__main__":
    run_main(main)
