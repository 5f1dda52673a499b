"""`python -m helpers.controlgpt`: the command line of ``helpers.control.controlgpt``."""

from helpers.core.cli import run_main
from helpers.control.controlgpt import main

if __name__ == "__main__":
    run_main(main)
