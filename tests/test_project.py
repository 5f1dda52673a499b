"""The repository's own promises: environment files agree, notebooks are clean, CI runs the README."""

import json
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])


def _environment_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    return {line.strip()[2:] for line in lines[start + 1 :] if line.startswith("      - ")}


def test_environment_yml_agrees_with_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_key_libraries_are_pinned():
    reqs = {re.split(r"[=<>]", r)[0]: r for r in _pyproject_requirements()}
    for name in ("diffusers", "transformers", "accelerate", "safetensors", "nbmake", "jupyterlab"):
        assert "==" in reqs[name], f"{name} should be pinned exactly"
    assert reqs["bitsandbytes"].startswith("bitsandbytes>=0.50")
    assert reqs["torch"].startswith("torch>="), "torch must stay loose so Colab's CUDA build is kept"


def test_makefile_installs_the_cpu_torch_first():
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("$(TORCH)\n") < makefile.index('-e ".[dev]"')
    assert "TORCH := torch==2.13.0" in makefile


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make course" in readme
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make test"]


def test_notebooks_are_committed_clean():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            assert not cell.get("outputs"), f"{path.name} has outputs"
            assert cell.get("execution_count") is None, f"{path.name} has execution counts"
        assert "widgets" not in nb["metadata"], f"{path.name} has widget state"


def test_notebooks_are_numbered_and_have_a_colab_badge():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert re.fullmatch(r"\d\d_[\w.-]+\.ipynb", path.name)
        first = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert f"blob/main/notebooks/{path.name}" in first, f"{path.name}: Colab badge missing or pointing elsewhere"


def test_every_notebook_clones_the_course_from_the_one_url():
    from helpers.course.colab import main

    main(["--check"])  # exits with one line naming the notebooks whose Colab cell differs


def test_no_notebook_text_holds_control_characters():
    """A Python string escape (``"\\bar"`` is a backspace and "ar") must not reach a notebook's text."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            bad = sorted({hex(ord(ch)) for ch in "".join(cell["source"]) if ord(ch) < 32 and ch not in "\n\t"})
            assert not bad, f"{path.name} cell {i} holds control characters {bad}"
