"""`python -m helpers.upscaler`: the command line of ``helpers.upscaler.cli``."""

from helpers.core.cli import run_main
from helpers.upscaler.cli import main

run_main(main)
