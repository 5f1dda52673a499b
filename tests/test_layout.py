"""The package's shape: subpackages without import cycles, every module importable from an installed
copy (not only the editable one), and every command the README documents a module with a main."""

import ast
import importlib
import importlib.util
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(helpers.__path__, "helpers.") if not m.name.endswith("__main__"))


def _imports(name: str) -> set[str]:
    """The helpers modules that ``name`` imports, at its top or inside a function."""
    found = set()
    tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("helpers.")}
    return found - {name, "helpers"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_back():
    graph = {name: _imports(name) for name in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


ROWS = {
    "core": 0,
    "diffusion": 1,
    "training": 1,
    "toy": 2,
    "dreambooth": 3,
    "control": 3,
    "upscaler": 3,
    "evaluation": 3,
    "course": 3,
}  # helpers/README.md draws them


def _part(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROWS else None


def test_every_subpackage_uses_only_rows_below_its_own():
    assert set(ROWS) == {m.name for m in pkgutil.iter_modules(helpers.__path__) if m.ispkg}
    for name in MODULES:
        for used in _imports(name):
            if _part(name) and _part(used) and _part(used) != _part(name):
                assert ROWS[_part(used)] < ROWS[_part(name)], f"{name} uses {used}, on a row not below its own"


def test_an_installed_copy_imports_every_module(tmp_path):
    """``pip install .`` (not ``-e``) into a folder, then every module imported from there. It installs
    from a copy of the sources, so that the build leaves no ``build/`` folder in the repository."""
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(ROOT / "helpers", source / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(target), str(source)], check=True, capture_output=True)
    script = (
        "import importlib, helpers; names = " + repr(MODULES) + "\n"
        "[importlib.import_module(n) for n in names]\nprint(helpers.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).is_relative_to(target)


def test_every_readme_command_is_a_module_with_a_main():
    commands = set(re.findall(r"-m\s+(helpers(?:\.\w+)+)", (ROOT / "README.md").read_text()))
    assert len(commands) >= 10
    for name in sorted(commands):
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"{name} is in the README but is no module"
        entry = importlib.util.find_spec(f"{name}.__main__") if spec.submodule_search_locations else spec
        assert entry is not None and "run_main(main)" in Path(entry.origin).read_text(), (
            f"python -m {name} runs nothing"
        )


@pytest.mark.parametrize("name", ["helpers.pretrain", "helpers.dreambooth", "helpers.upscaler", "helpers.controlnet"])
def test_a_command_answers_help_as_written(name):
    done = subprocess.run([sys.executable, "-m", name, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-1000:]
