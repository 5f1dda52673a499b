"""The flow-matching family in the profiles: toy-flow and sd35 chosen, recognised and loaded like toy and sd15."""

import json

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from helpers.diffusion import profiles
from helpers.diffusion.generate import main as generate_main
from helpers.evaluation.evaluate import main as evaluate_main
from helpers.toy import flow_model


@pytest.fixture(scope="module")
def flow_folder(tmp_path_factory):
    """A toy flow pipeline (random transformer) saved as `python -m helpers.pretrain flow` saves one."""
    folder = tmp_path_factory.mktemp("flow") / "toy-flow"
    flow_model.build_pipeline().save_pretrained(folder)
    return folder


def test_the_flow_notebooks_choose_toy_flow_on_a_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    profile = profiles.choose_profile(family="sd3")
    assert (profile.name, profile.device, profile.family, profile.is_toy) == ("toy-flow", "cpu", "sd3", True)
    assert profile.pipeline_kwargs == {"max_sequence_length": flow_model.MAX_SEQUENCE_LENGTH}
    assert profiles.choose_profile().name == "toy"  # the SD 1.x notebooks keep theirs


@pytest.mark.parametrize(("env", "family", "chosen"), [("toy", "sd3", "toy-flow"), ("toy-flow", "sd", "toy")])
def test_course_profile_picks_the_same_place_in_the_other_family(monkeypatch, env, family, chosen):
    monkeypatch.setenv("COURSE_PROFILE", env)
    assert profiles.choose_profile(family=family).name == chosen


def test_the_real_flow_profile_without_a_gpu_is_one_line_naming_the_toy(monkeypatch):
    monkeypatch.setattr(profiles.torch.cuda, "is_available", lambda: False)
    with pytest.raises(profiles.UsageError, match="sd35 profile needs a CUDA GPU.*use the toy-flow profile"):
        profiles.choose_profile("sd35", family="sd3")


def test_a_saved_toy_flow_model_is_recognised_as_the_toy_flow_profile(flow_folder):
    profile = profiles.profile_for_model(str(flow_folder))
    assert (profile.name, profile.model, profile.resolution) == ("toy-flow", str(flow_folder), 64)
    assert profile.num_inference_steps == 28 and profile.is_flow
    assert profiles.model_family(str(flow_folder)) == "sd3"


def test_toy_flow_names_the_shipped_folder_and_the_command_that_makes_it(flow_folder, monkeypatch):
    monkeypatch.setattr(profiles, "TOY_FLOW_MODEL", flow_folder)
    assert profiles.resolve_model("toy-flow") == str(flow_folder)
    monkeypatch.setattr(profiles, "TOY_FLOW_MODEL", flow_folder.parent / "missing")
    with pytest.raises(profiles.UsageError, match=r"make it with `python -m helpers.pretrain flow`"):
        profiles.resolve_model("toy-flow")


def test_the_sd3_shaped_fixture_is_the_sd35_profile_which_leaves_t5_out_unless_asked(sd3_folders):
    from dataclasses import replace

    import sd3_shaped

    assert profiles.profile_for_model(str(sd3_folders.fp16)).name == "sd35"
    profile = sd3_shaped.cpu_profile(sd3_folders)
    pipe = profiles.load_pipeline(profile.model, profile)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None and not profiles.SD35.t5  # a T4's plan
    assert pipe.transformer.dtype == profiles.torch.float16
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {profiles.torch.float16}  # one dtype throughout
    with_t5 = profiles.load_pipeline(profile.model, replace(profile, t5=True))
    assert with_t5.text_encoder_3 is not None and with_t5.text_encoder_3.dtype == profiles.torch.float16


def test_the_sd_shaped_fixture_and_sd3_hub_ids_keep_their_families(sd_folders):
    assert profiles.profile_for_model(str(sd_folders.fp16)).name == "sd15"
    assert profiles.model_family(profiles.SD35_MODEL) == "sd3"
    assert profiles.model_family(profiles.SD15_MODEL) == "sd"


def test_load_pipeline_gives_the_sd3_pipeline_with_its_own_euler_scheduler(flow_folder):
    pipe = profiles.load_pipeline(str(flow_folder))
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)  # never swapped for DDIM
    assert pipe.transformer.dtype == profiles.torch.float32 and pipe.device.type == "cpu"


def test_generate_draws_with_the_flow_model_and_its_profile(flow_folder, tmp_path):
    out = tmp_path / "images"
    generate_main(
        ["--model", str(flow_folder), "--prompt", "a photo of a red dog", "--num_images", "2"]
        + ["--num_inference_steps", "2", "--output_dir", str(out)]
    )
    manifest = json.loads((out / "generation.json").read_text())
    assert manifest["scheduler"] == "FlowMatchEulerDiscreteScheduler" and manifest["complete"]
    assert sorted(p.name for p in out.glob("*.png")) == ["00000.png", "00001.png"]


def test_evaluate_scores_the_flow_model_with_the_toy_judge(flow_folder, capsys):
    argv = ["--model", str(flow_folder), "--subject_dir", str(profiles.DATA / "subjects" / "toy_dog")]
    argv += ["--instance_prompt", "a photo of a red dog", "--class_prompt", "a photo of a dog"]
    evaluate_main(argv + ["--num_samples", "2", "--num_inference_steps", "2"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["scorers"] == "toy judge" and report["num_samples"] == 2
    assert 0 <= report["prompt_fidelity"] <= 1


def test_the_controlnet_trainer_refuses_a_flow_model_in_one_line(flow_folder, run_tool, tmp_path):
    (tmp_path / "pairs").mkdir()
    own = ["--train_data_dir", str(tmp_path / "pairs"), "--output_dir", str(tmp_path / "out")]
    result = run_tool("controlnet", "--pretrained_model_name_or_path", str(flow_folder), *own)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "is a flow-matching model (StableDiffusion3Pipeline)" in line
    assert not (tmp_path / "out").exists()
