"""Run by tests/dreambooth/test_train.py under `torchrun --nproc_per_node 2`: train a few steps, then record
this rank's parameter digest and every file write it made."""

import hashlib
import json
import sys
from pathlib import Path

import helpers.training.loop as loop_mod
from helpers.core.runtime import configure_cpu
from helpers.dreambooth.trainer import TrainConfig, Trainer


def main(subject: str, output: str, report: str) -> None:
    configure_cpu()
    writes: list[str] = []
    real_write, real_save = loop_mod.write_text_atomic, Trainer._save_output

    def logged_write(path, text):
        writes.append(Path(path).name)
        real_write(path, text)

    def logged_save(self):
        writes.append("pipeline")
        real_save(self)

    loop_mod.write_text_atomic = logged_write
    Trainer._save_output = logged_save
    trainer = Trainer(
        TrainConfig(
            instance_data_dir=subject,
            instance_prompt="a photo of sks dog",
            output_dir=output,
            max_train_steps=3,
            learning_rate=1e-3,
            checkpointing_steps=2,
            progress=False,
        )
    )
    trainer.train()
    digest = hashlib.sha256()
    for p in trainer.accelerator.unwrap_model(trainer.unet).parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    Path(report, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "digest": digest.hexdigest(),
                "writes": writes,
                "world": trainer.accelerator.num_processes,
                "distributed_type": str(trainer.accelerator.distributed_type),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
