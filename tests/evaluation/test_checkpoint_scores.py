"""Scoring a run's checkpoints: each loads as the model of its step, and the step to keep."""

import pytest
import torch
from conftest import toy_flow_velocity
from safetensors.torch import load_file

from helpers.core.images import load_image_folder
from helpers.core.paths import ROOT
from helpers.dreambooth.trainer import TrainConfig, train
from helpers.evaluation.checkpoints import checkpoint_steps, mean_rows, score_run, sweet_spot, with_checkpoint
from helpers.evaluation.evaluate import toy_scorers

SUBJECT = ROOT / "data" / "subjects" / "toy_dog"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(
        TrainConfig(
            instance_data_dir=str(SUBJECT),
            instance_prompt="a photo of sks dog",
            output_dir=str(out),
            max_train_steps=4,
            learning_rate=1e-3,
            checkpointing_steps=2,
            train_text_encoder=True,
            progress=False,
        )
    )
    return out


def test_a_checkpoint_swaps_in_its_own_unet_and_text_encoder_and_leaves_the_base_alone(run, toy_pipe):
    before = {k: v.clone() for k, v in toy_pipe.unet.state_dict().items()}
    assert checkpoint_steps(run) == [2, 4] and with_checkpoint(toy_pipe, run, 0) is toy_pipe
    pipe = with_checkpoint(toy_pipe, run, 4)
    final = load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(v, final[k]) for k, v in pipe.unet.state_dict().items())
    assert pipe.text_encoder is not toy_pipe.text_encoder and pipe.vae is toy_pipe.vae
    assert all(torch.equal(v, before[k]) for k, v in toy_pipe.unet.state_dict().items())
    step2 = with_checkpoint(toy_pipe, run, 2).unet.state_dict()
    assert any(not torch.equal(step2[k], final[k]) for k in final)


def test_every_checkpoint_is_scored_on_the_same_samples(run, toy_pipe):
    prompts = {"instance": "a photo of sks dog", "class": "a photo of dog", "context": "a photo of sks dog in the snow"}
    kw = dict(num_samples=2, seed=0, sample_kw=dict(num_inference_steps=2))
    rows = score_run(toy_pipe, run, toy_scorers(), load_image_folder(SUBJECT), prompts, **kw)
    assert [r["step"] for r in rows] == [2, 4]
    assert set(rows[0]) == {"step", "subject_fidelity", "pres", "div", "context_fidelity", "context_subject_fidelity"}
    assert all(0 <= r["context_fidelity"] <= 1 and -1 <= r["subject_fidelity"] <= 1 for r in rows)


def test_the_step_to_keep_is_the_best_subject_before_the_prompt_is_dropped():
    rows = [
        {"step": 0, "subject_fidelity": 0.70, "context_fidelity": 1.00},  # the base model: no subject, any prompt
        {"step": 100, "subject_fidelity": 0.85, "context_fidelity": 0.90},
        {"step": 200, "subject_fidelity": 0.86, "context_fidelity": 0.84},
        {"step": 300, "subject_fidelity": 0.90, "context_fidelity": 0.60},  # overfitted: the prompt is ignored
    ]
    # the bar is 90% of step 100's 0.90, not of the base model's 1.00 (which would leave only step 100)
    assert sweet_spot(rows) == 200 and sweet_spot(rows, keep=0.95) == 100
    negative = [dict(r, context_fidelity=r["context_fidelity"] - 2) for r in rows]  # -1.0, -1.1, -1.16, -1.4
    assert sweet_spot(negative) == 200  # within 10% of the best's size below it: the same steps qualify
    assert sweet_spot(rows[:1]) == 0  # only the base model scored: nothing else to keep
    mean = mean_rows([rows[:2], [dict(r, subject_fidelity=0.5) for r in rows[:2]]])
    assert [r["step"] for r in mean] == [0, 100] and [r["context_fidelity"] for r in mean] == [1.0, 0.9]
    assert [r["subject_fidelity"] for r in mean] == pytest.approx([0.6, 0.675])


def _flow_run(out, **kw):
    train(
        TrainConfig(
            pretrained_model_name_or_path="toy-flow",
            instance_data_dir=str(SUBJECT),
            instance_prompt="a photo of sks dog",
            output_dir=str(out),
            max_train_steps=4,
            checkpointing_steps=2,
            progress=False,
            **kw,
        )
    )
    return out


def test_a_flow_lora_checkpoint_loads_its_adapters_for_the_block_and_unloads_them_after(tmp_path):
    from helpers.diffusion.profiles import load_pipeline
    from helpers.evaluation.checkpoints import checkpoint_pipeline

    run = _flow_run(tmp_path / "lora", lora_rank=2, learning_rate=1e-2, train_text_encoder=True)
    base, final = load_pipeline("toy-flow"), load_pipeline(str(run))
    before = toy_flow_velocity(base.transformer)
    with checkpoint_pipeline(base, run, 4) as pipe:
        torch.testing.assert_close(toy_flow_velocity(pipe.transformer), toy_flow_velocity(final.transformer))
    assert torch.equal(toy_flow_velocity(base.transformer), before) and not any(
        "lora" in n for n, _ in base.transformer.named_modules()
    )
    prompts = {"instance": "a photo of sks dog", "class": "a photo of dog", "context": "a photo of sks dog in the snow"}
    kw = dict(num_samples=2, seed=0, sample_kw=dict(num_inference_steps=2, max_sequence_length=0))
    assert [r["step"] for r in score_run(base, run, toy_scorers(), load_image_folder(SUBJECT), prompts, **kw)] == [2, 4]


def test_a_full_flow_checkpoint_swaps_in_its_transformer(tmp_path):
    from helpers.diffusion.profiles import load_pipeline

    run = _flow_run(tmp_path / "full", learning_rate=1e-3)
    base, final = load_pipeline("toy-flow"), load_pipeline(str(run))
    pipe = with_checkpoint(base, run, 4)
    assert pipe.transformer is not base.transformer and pipe.vae is base.vae
    torch.testing.assert_close(toy_flow_velocity(pipe.transformer), toy_flow_velocity(final.transformer))
