"""DreamBooth from a terminal, with the flags of diffusers' train_dreambooth.py.

    python -m helpers.dreambooth --pretrained_model_name_or_path toy \\
        --instance_data_dir data/subjects/toy_dog --instance_prompt "a photo of sks dog" \\
        --with_prior_preservation --class_prompt "a photo of dog" --class_data_dir outputs/class/dog \\
        --max_train_steps 400 --learning_rate 1e-4 --train_text_encoder --use_8bit_adam --output_dir outputs/sks-dog

(On the toy, ``--train_text_encoder`` lets "sks" move: its frozen text encoder barely tells "sks dog"
from "dog"; notebook 04 measures it.)

Runs unchanged under ``accelerate launch`` and ``torchrun --nproc_per_node N`` (data parallel).
"""

from __future__ import annotations

from helpers.cli import run_main, train_main
from helpers.train import TrainConfig, train

_HELP = {
    "pretrained_model_name_or_path": "toy, a local pipeline folder, or a hub id",
    "revision": "the hub revision (branch, tag or commit) of the model",
    "variant": "load the weights of this variant, e.g. fp16 for *.fp16.safetensors (trained parts are float32 anyway)",
    "instance_data_dir": "folder with the subject's photos",
    "instance_prompt": "prompt with the identifier, e.g. 'a photo of sks dog'",
    "class_data_dir": "where class images are cached (generated when missing or stale)",
    "class_prompt": "prompt for the class, e.g. 'a photo of dog'",
    "with_prior_preservation": "add the prior-preservation loss on class images",
    "text_encoder_lr": "learning rate of the text encoder (default: --learning_rate)",
    "allow_adamw_fallback": "with --use_8bit_adam, train with torch AdamW if bitsandbytes cannot load",
    "snr_gamma": "min-SNR weighting gamma (5.0 is the paper's choice)",
    "offset_noise": "add 0.1 x per-channel offset noise",
    "resume_from_checkpoint": "a checkpoint-N folder or 'latest'",
    "mixed_precision": "no, fp16 (CUDA) or bf16",
    "lora_rank": "train rank-r LoRA adapters on the attention projections instead of the whole UNet "
                 "(and of the text encoder with --train_text_encoder); the output loads with load_lora_weights",
    "lora_alpha": "LoRA scale numerator (default: --lora_rank, so the scale alpha/rank is 1)",
}


def main(argv: list[str] | None = None) -> None:
    train_main(TrainConfig, train, "python -m helpers.dreambooth", __doc__.split("\n")[0], _HELP, argv)


if __name__ == "__main__":
    run_main(main)
