"""`python -m helpers.course`: the command line of ``helpers.course.runner``."""

from helpers.core.cli import run_main
from helpers.course.runner import main

run_main(main)
