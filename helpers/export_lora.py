"""`python -m helpers.export_lora`: the command line of ``helpers.diffusion.lora_export``."""

from helpers.core.cli import run_main
from helpers.diffusion.lora_export import main

if __name__ == "__main__":
    run_main(main)
