"""The layer rule, read from the imports (AST): docs/architecture.md draws the same layers.

Fails on an import cycle, on an import that points up (or sideways, between two packages of one
layer), on a function-local import of the package (they hide cycles), on a private name imported
from another module, and on library code importing a ``python -m latent_flow.X`` entry module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "latent_flow"

#: layer of every package (lower numbers are lower layers; a module imports only lower layers or its own package)
LAYERS: dict[str, int] = {
    "utils": 0,
    "flow": 1,
    "sampling": 2,
    "backbones": 2,
    "autoencoders": 2,
    "data": 3,
    "conditioning": 4,
    "evaluation": 5,
    "training": 6,
    "flowturbo": 7,
    "compositional": 7,
    "generation": 8,
    "api": 9,
    "cli": 10,
}
COMMANDS = {
    "train", "sample", "evaluate", "encode", "train_autoencoder", "likelihood", "edit", "train_classifier",
    "reference_stats", "prepare_data", "posthoc_ema",
}  # fmt: skip
COMMAND_LAYER = 11
#: third-party imports that may stay inside functions: heavy or used on one path only
LAZY_THIRD_PARTY = ("torch_fidelity", "resvg_py", "lmdb", "torchdiffeq", "diffusers", "huggingface_hub")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> dict[str, list[tuple[str, list[str], bool, int]]]:
    """module -> [(imported module, names, function-local?, line)] for every import statement."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text())
        local_nodes = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append((alias.name, [], id(node) in local_nodes, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(node, module, path.name == "__init__.py")
                found.append((target, [a.name for a in node.names], id(node) in local_nodes, node.lineno))
        out[module] = found
    return out


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if parts[0] != "latent_flow" or len(parts) == 1:
        return None
    head = parts[1]
    if head in COMMANDS and len(parts) == 2:
        return head, COMMAND_LAYER
    if head not in LAYERS:
        raise AssertionError(f"{module}: package {head!r} has no layer in tests/unit/test_architecture.py::LAYERS")
    return head, LAYERS[head]


IMPORTS = _imports()


def _package_edges():
    for module, found in IMPORTS.items():
        for target, names, local, line in found:
            if target == "latent_flow" and names:  # from latent_flow import x -> the submodule
                targets = [f"latent_flow.{n}" for n in names]
            else:
                targets = [target]
            for t in targets:
                if t.startswith("latent_flow"):
                    yield module, t, names, local, line


def test_every_package_has_a_layer():
    for module in IMPORTS:
        _layer(module)


def test_imports_point_down():
    wrong = []
    for module, target, _, _, line in _package_edges():
        src, dst = _layer(module), _layer(target)
        if src is None or dst is None or src[0] == dst[0]:
            continue
        if dst[1] >= src[1]:
            wrong.append(f"{module}:{line} imports {target} (layer {dst[1]} from layer {src[1]})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in IMPORTS}
    for module, target, names, _, _ in _package_edges():
        candidates = [target] + [f"{target}.{n}" for n in names]
        for t in candidates:
            if t in graph and t != module:
                graph[module].add(t)
    # a package's __init__ re-exporting its submodules is not a cycle with them
    for module in graph:
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_local_imports():
    local = []
    for module, found in IMPORTS.items():
        for target, _, is_local, line in found:
            if is_local and not target.startswith(LAZY_THIRD_PARTY):
                local.append(f"{module}:{line} imports {target} inside a function")
    assert not local, "\n".join(local)


def test_no_private_names_across_modules():
    wrong = [
        f"{module}:{line} imports {n} from {target}"
        for module, target, names, _, line in _package_edges()
        for n in names
        if n.startswith("_") and target != module
    ]
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_a_command_module():
    wrong = [
        f"{module}:{line} imports the entry point {target}"
        for module, target, _, _, line in _package_edges()
        if (_layer(target) or ("", 0))[1] == COMMAND_LAYER
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_entry_points_are_thin(command):
    """Each ``python -m latent_flow.X`` is a Hydra wrapper over one function of the command-line layer."""
    path = PACKAGE / f"{command}.py"
    tree = ast.parse(path.read_text())
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["main"], f"{path.name} defines {functions}; the work belongs in latent_flow.cli.{command}"
    assert len(path.read_text().splitlines()) <= 40
    targets = {t for t, *_ in IMPORTS[f"latent_flow.{command}"] if t.startswith("latent_flow")}
    assert targets <= {"latent_flow.cli.run", f"latent_flow.cli.{command}"}, targets


def test_the_rule_catches_an_upward_import(tmp_path):
    """The checks above can fail: an upward edge is reported by the same code path."""
    assert _layer("latent_flow.flow.path")[1] < _layer("latent_flow.training.module")[1]
    assert _layer("latent_flow.train")[1] == COMMAND_LAYER
    with pytest.raises(AssertionError):
        _layer("latent_flow.nowhere.module")
