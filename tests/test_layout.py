"""The floor plan holds: dvc.yaml names exactly the modules each stage runs, model/ stands alone,
plot reads reports/ only, and every command stays a thin layer over its libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PACKAGES = ("stages", "model")


def project_imports(path: Path) -> set[Path]:
    """The project modules a file imports anywhere in it (functions included), as repo-relative paths."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
        for name in names:
            module = Path(*name.split(".")).with_suffix(".py")
            if (REPO / module).is_file():
                found.add(module)
    return found


def closure(module: Path) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(project_imports(REPO / path))
    return seen


def command_module(stage: dict) -> Path:
    words = stage["cmd"].split()
    assert words[:3] == ["python", "-m", words[2]] and words[2].startswith("stages."), stage["cmd"]
    return Path(*words[2].split(".")).with_suffix(".py")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_deps_name_exactly_the_code_a_stage_runs(name: str) -> None:
    """A change to a library reruns the stages that import it and no others."""
    stage = STAGES[name]
    declared = {Path(d.split()[0]) for d in stage["deps"] if d.endswith(".py") or ".py " in d}
    assert declared == closure(command_module(stage)), name


def test_model_imports_nothing_from_stages() -> None:
    for path in sorted((REPO / "model").glob("*.py")):
        assert not {m for m in project_imports(path) if m.parts[0] == "stages"}, path.name


def test_plot_reads_reports_only() -> None:
    plot = STAGES["plot"]
    assert not [d for d in plot["deps"] if d.startswith("data/")]
    code = closure(command_module(plot))
    assert not {m for m in code if m.name in ("faces.py", "training.py", "data.py", "network.py")}, code


@pytest.mark.parametrize("name", sorted(STAGES))
def test_commands_are_thin(name: str) -> None:
    lines = (REPO / command_module(STAGES[name])).read_text().count("\n")
    assert lines <= 300, (
        f"{name}: {lines} lines; move the library part to stages/preprocess, sources or report"
    )


def test_pip_install_finds_every_package() -> None:
    """pyproject.toml's package list covers every folder of code, so `pip install .` ships it all."""
    import tomllib

    find_packages = pytest.importorskip("setuptools").find_packages

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    found = set(find_packages(str(REPO), include=include))
    folders = {p.parent.relative_to(REPO).as_posix().replace("/", ".") for p in REPO.glob("[ms]*/**/*.py")}
    assert {f for f in folders if f.split(".")[0] in PACKAGES} <= found
