"""Documentation that runs (#30 item 5): every ``python -m latent_flow.<command> ...`` line in a shell block
of README.md and docs/*.md composes with its command's config (what ``--cfg job`` prints: the same Hydra
composition, every value resolved), and every ```python block is executed against a tiny trained run.

Placeholders a reader replaces keep working: ``outputs/train/RUN`` (and ``RUN/``) is the tiny run,
``...`` and other free-text values are plain strings to the composition. Multirun lines (``-m``) compose
once per value of each swept option. Blocks of signatures (``docs/interfaces.md``) are fenced ``text``.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from conftest import TINY_TRAIN, compose
from latent_flow.cli.prepare_data import positional_dataset

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
_COMMAND = re.compile(r"(?:^|\s)-m\s+latent_flow\.(\w+)\s*(.*)$")
#: how a command line starts (environment assignments, a launcher, the interpreter)
_STARTS = re.compile(r"^\s*(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:srun\s+|torchrun\s|\S*python\S*\s)")


def _blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(fence language, first line number, lines) of each fenced block."""
    out, lang, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = line.strip()
        if fence.startswith("```"):
            if lang is None:
                lang, start, lines = fence[3:].strip().lower(), number + 1, []
            else:
                out.append((lang, start, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return out


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(``file:line``, command, arguments) of every command line in the docs' shell blocks."""
    found = []
    for path in DOCS:
        for lang, start, lines in _blocks(path):
            if lang not in SHELL_FENCES:
                continue
            i = 0
            while i < len(lines):
                number, text = start + i, lines[i]
                while text.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    text = text.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                match = _COMMAND.search(text)
                if match is None or not _STARTS.match(text):
                    continue
                args = shlex.split(match.group(2), comments=True)
                found.append((f"{path.relative_to(ROOT)}:{number}", match.group(1), args))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_entry_point():
    shown = {command for _, command, _ in COMMANDS}
    modules = {p.stem for p in (ROOT / "src" / "latent_flow").glob("*.py")} - {"__init__", "api"}
    assert len(COMMANDS) > 60 and shown <= modules, sorted(shown - modules)
    assert {"train", "sample", "evaluate", "reference_stats", "prepare_data"} <= shown


def _variants(args: list[str]) -> list[list[str]]:
    """A multirun's argument lists: one per value of each swept option (others at their first value)."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(args)
    first = []
    for override in parsed:
        if override.is_sweep_override():
            first.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
        else:
            first.append(override.input_line)
    variants = [first]
    for k, override in enumerate(parsed):
        if override.is_sweep_override():
            for value in list(override.sweep_string_iterator())[1:]:
                variants.append([*first[:k], f"{override.get_key_element()}={value}", *first[k + 1 :]])
    return variants


@pytest.fixture(scope="module")
def hydra_config_dir():
    """One Hydra initialisation for all the compositions (each command composes its own config)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from latent_flow.cli.run import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in DOCS])
def test_documented_commands_compose(doc, hydra_config_dir, tmp_path):
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig

    paths = [f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    failures = []
    for where, command, args in (c for c in COMMANDS if c[0].startswith(f"{doc}:")):
        if command == "prepare_data":
            args = positional_dataset(["prepare_data", *args])[1:]
        multirun = "-m" in args or "--multirun" in args
        args = [a for a in args if a not in ("-m", "--multirun")]
        for variant in _variants(args) if multirun else [args]:
            try:
                assert all(not a.startswith("-") for a in variant), f"unexpected flag in {variant}"
                extra = paths[:1] if command == "sample" else paths
                cfg = hydra_compose(config_name=command, overrides=extra + variant, return_hydra_config=True)
                HydraConfig().set_config(cfg)  # ${hydra:...} interpolations resolve as in the command
                with open_dict(cfg):
                    del cfg.hydra  # the app's config does not carry the hydra node
                OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
            except Exception as exc:  # an override or interpolation the command would fail on
                failures.append(f"{where}: `{command} {' '.join(variant)}`: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------- python snippets
def python_snippets() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)}:{start}", "\n".join(lines))
        for path in DOCS
        for lang, start, lines in _blocks(path)
        if lang in ("python", "py")
    ]


SNIPPETS = python_snippets()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 6-step quick-start run standing in for ``outputs/train/RUN`` (with a ``step_0000500.ckpt``)."""
    from latent_flow.cli.train import run_training

    root = tmp_path_factory.mktemp("docs_run")
    cfg = compose("train", [*TINY_TRAIN, "logger=csv"], root)
    run_training(cfg)
    run = Path(cfg.paths.output_dir)
    ckpts = run / "checkpoints"
    for suffix in ("", ".xxh128"):
        shutil.copyfile(ckpts / f"step_0000003.ckpt{suffix}", ckpts / f"step_0000500.ckpt{suffix}")
    return run


def test_the_docs_hold_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize(("where", "code"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_python_snippet_runs(where, code, tiny_run, monkeypatch, capsys):
    code = code.replace("outputs/train/RUN", str(tiny_run)).replace("RUN/", f"{tiny_run}/")
    monkeypatch.chdir(tiny_run)
    try:
        exec(compile(code, where, "exec"), {"__name__": "__docs__"})  # noqa: S102 - the docs' own code
    except Exception as exc:
        raise AssertionError(f"the snippet at {where} fails: {type(exc).__name__}: {exc}") from exc
