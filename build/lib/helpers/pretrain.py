"""`python -m helpers.pretrain`: the command line of ``helpers.toy.pretrain``."""

from helpers.core.cli import run_main
from helpers.toy.pretrain import main

if __name__ == "__main__":
    run_main(main)
