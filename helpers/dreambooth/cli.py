"""DreamBooth from a terminal, with the flags of diffusers' train_dreambooth.py.

    python -m helpers.dreambooth --pretrained_model_name_or_path toy \\
        --instance_data_dir data/subjects/toy_dog --instance_prompt "a photo of sks dog" \\
        --with_prior_preservation --class_prompt "a photo of dog" --class_data_dir outputs/class/dog \\
        --max_train_steps 400 --learning_rate 1e-4 --train_text_encoder --use_8bit_adam --output_dir outputs/sks-dog

(On the toy, ``--train_text_encoder`` lets "sks" move: its frozen text encoder barely tells "sks dog"
from "dog"; notebook 04 measures it.)

A flow-matching model (``--pretrained_model_name_or_path toy-flow``, or SD 3.5) is trained by the same command
with the flags of diffusers' train_dreambooth_lora_sd3.py (``--weighting_scheme``, ``--precondition_outputs``,
``--lora_layers``, ...; ``helpers.dreambooth.flow_trainer``).

Runs unchanged under ``accelerate launch`` and ``torchrun --nproc_per_node N`` (data parallel).
"""

from __future__ import annotations

from helpers.core.cli import train_main
from helpers.dreambooth.trainer import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    train_main(TrainConfig, train, "python -m helpers.dreambooth", __doc__.split("\n")[0], argv)
