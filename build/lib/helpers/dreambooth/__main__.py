"""`python -m helpers.dreambooth`: the command line of ``helpers.dreambooth.cli``."""

from helpers.core.cli import run_main
from helpers.dreambooth.cli import main

run_main(main)
