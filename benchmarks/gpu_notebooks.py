"""The Colab path on a GPU: notebooks 04-07's real-model branches, notebook 09's SD 1.5 command and notebook
12's SD 3.5 Medium QLoRA branch, end to end at 512 px, on models of the hub's sizes with random weights, in
a process capped at a T4's 15 GiB.

    python benchmarks/gpu_notebooks.py [--steps 20] [--cap_gib 15] [--only 04]
    python benchmarks/gpu_notebooks.py --device cpu --size tiny --steps 2    (a dry run of the script itself)

Each notebook runs as committed, through the same nbmake harness as CI's real-branch run
(``tests/real_branch.py``), with ``PROFILE`` set to the sd15 profile on the SD 1.5-shaped folder saved
in fp16 (``tests/sd_shaped.py``, size ``sd15``: no hub needed) and only steps and image counts cut; notebook 12
runs on the sd35 profile and an SD 3.5 Medium-sized folder saved without T5 (``tests/sd3_shaped.py``), its
transformer in 4-bit NF4 as its sd35 column asks (compare its peak with ``helpers.training.memory``'s
``sd35_recipes()``, notebook 12's figure).
The trainers run fp16 mixed precision and bitsandbytes' CUDA AdamW8bit, as on a T4. The cap is
``torch.cuda.set_per_process_memory_fraction``, so a notebook that would not fit a T4 fails here with
an out-of-memory error. Prints one row per notebook: peak allocated and reserved GPU memory, and time.

Needs a CUDA GPU and, beside torch, transformers, accelerate and peft: diffusers, bitsandbytes,
nbmake, ipykernel (``pip download --no-deps`` their wheels where the GPU machine has no index).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import real_branch  # noqa: E402
import sd3_shaped  # noqa: E402
import sd_shaped  # noqa: E402

NOTEBOOKS = ["04_dreambooth_8bit_adam", "05_language_drift", "06_identifier_and_text_encoder", "07_lora_dreambooth"]
FLOW_NOTEBOOKS = ["12_flow_lora_dreambooth"]
FLOW_SIZES = {"sd15": "sd35", "tiny": "tiny"}  # --size: the SD3 family's folder of the same scale
GiB = 2**30


def cap(cap_gib: float) -> None:
    """Cap this process at ``cap_gib`` of GPU memory, as if the GPU were that small (no-op on a CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(cap_gib * GiB / torch.cuda.get_device_properties(0).total_memory)


def peaks() -> tuple[int, int]:
    import torch

    if not torch.cuda.is_available():
        return 0, 0
    return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def peak_lines(report: Path) -> list[str]:
    """After each cell: the running peaks (the trainers reset torch's own peak when a run starts)."""
    return [
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import gpu_notebooks",
        "_peaks = [max(a, b) for a, b in zip(globals().get('_peaks', [0, 0]), gpu_notebooks.peaks())]",
        f"open({str(report)!r}, 'w').write(str(_peaks))",
    ]


def profile_line(name: str, device: str, resolution: int) -> str:
    """The notebook's real profile (sd15, or sd35 for the flow notebooks) on its fixture: fp16 mixed precision on
    a GPU (bf16 on a CPU, which has no fp16 training), 10 sampler steps; sd35 with its own 77 T5 tokens."""
    precision = "fp16" if device == "cuda" else "bf16"
    module = real_branch.fixture_module(name)
    tokens = ", max_sequence_length=77" if module == "sd3_shaped" and resolution == 512 else ""
    return (
        f"import dataclasses; PROFILE = dataclasses.replace({module}.cpu_profile(FIXTURE, {resolution}), "
        f"device={device!r}, mixed_precision={precision!r}, num_inference_steps=10{tokens})"
    )


def run_notebook(name: str, folders, args: argparse.Namespace, work: Path) -> dict:
    import nbformat

    report = work / f"{name}.peak"
    lines = (f"gpu_notebooks.cap({args.cap_gib})",)
    after = real_branch.override(name, folders, profile_line(name, args.device, args.resolution), args.steps, lines)
    copy = real_branch.with_override(ROOT / "notebooks" / f"{name}.ipynb", after, work)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:  # the running peak after every code cell
        if cell.cell_type == "code":
            hooks = cell.metadata.setdefault("nbmake", {}).setdefault("post_cell_execute", [])
            hooks += peak_lines(report)
    nbformat.write(nb, copy)
    start = time.perf_counter()
    error = real_branch.run(copy, ROOT / "outputs" / "gpu-notebooks", timeout=3600)
    allocated, reserved = json.loads(report.read_text()) if report.exists() else (0, 0)
    return {
        "notebook": name,
        "ok": error is None,
        "error": error.summary[-300:] if error else "",
        "peak_allocated_gib": allocated / GiB,
        "peak_reserved_gib": reserved / GiB,
        "seconds": time.perf_counter() - start,
    }


def run_controlnet(folders, args: argparse.Namespace, work: Path) -> dict:
    """Notebook 09's SD 1.5 command, with only the model, folders and step count replaced."""
    from helpers.control import dataset as control_data
    from helpers.control.trainer import SD15_FLAGS, main

    cap(args.cap_gib)
    data = control_data.write_dataset(work / "control-data", 64, progress=False)
    shrunk = {
        "pretrained_model_name_or_path": str(folders.fp16),
        "train_data_dir": str(data),
        "output_dir": str(work / "controlnet"),
        "max_train_steps": str(args.steps),
        "resolution": str(args.resolution),
    }
    if args.device == "cpu":
        shrunk["mixed_precision"] = "bf16"
    words = real_branch.replace_flags(SD15_FLAGS, shrunk)
    start = time.perf_counter()
    error = ""
    try:
        main(words + ["--no_progress"])
    except Exception as err:  # an out-of-memory error is a result here, not a crash
        error = f"{type(err).__name__}: {str(err)[:300]}"
    allocated, reserved = peaks()
    return {
        "notebook": "09 (SD 1.5 command)",
        "ok": not error,
        "error": error,
        "peak_allocated_gib": allocated / GiB,
        "peak_reserved_gib": reserved / GiB,
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per fine-tune (the notebooks: 800)")
    parser.add_argument("--cap_gib", type=float, default=15.0, help="GPU memory cap (a T4: 15 GiB)")
    parser.add_argument("--only", default=None, help="run only notebooks whose name contains this text")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="sd15", choices=["sd15", "tiny"], help="the SD-shaped models' size")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "this check needs a CUDA GPU; on a CPU, tests/course/test_real_branches.py runs the same notebooks "
            "(or add --device cpu --size tiny for a dry run of this script)"
        )
    args.resolution = 512 if args.size == "sd15" else 64
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        chosen = [n for n in NOTEBOOKS + FLOW_NOTEBOOKS if args.only is None or args.only in n]
        rows = []
        if args.only is None or "09" in args.only or set(chosen) & set(NOTEBOOKS):
            folders = sd_shaped.build(work / "sd", size=args.size)
            print(f"{args.size}-sized random SD folders built in {time.perf_counter() - start:.0f} s")
            rows = [run_notebook(n, folders, args, work) for n in chosen if n in NOTEBOOKS]
            if args.only is None or "09" in args.only:
                rows.append(run_controlnet(folders, args, work))
        if set(chosen) & set(FLOW_NOTEBOOKS):
            start, size = time.perf_counter(), FLOW_SIZES[args.size]
            flow = sd3_shaped.build(work / "sd3", size=size, fp32=False, t5=False)
            print(f"{size}-sized random SD3 folders (fp16, no T5) built in {time.perf_counter() - start:.0f} s")
            rows += [run_notebook(n, flow, args, work) for n in chosen if n in FLOW_NOTEBOOKS]
    print(
        f"{'notebook':34s} {'ok':>4s} {'peak alloc GiB':>14s} {'peak reserved GiB':>17s} {'seconds':>8s}  "
        f"(cap {args.cap_gib} GiB)"
    )
    for r in rows:
        print(
            f"{r['notebook']:34s} {str(r['ok']):>4s} {r['peak_allocated_gib']:14.2f} {r['peak_reserved_gib']:17.2f} "
            f"{r['seconds']:8.0f}  {r['error']}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
