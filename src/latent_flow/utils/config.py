"""Config helpers shared by every layer: OmegaConf nodes to plain Python, option checking by signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import OmegaConf

__all__ = ["to_plain", "check_options"]


def to_plain(value: Any) -> Any:
    """An OmegaConf node resolved to plain dicts / lists; other mappings as a ``dict``; anything else as it is."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def check_options(target: type | Callable, options: Mapping[str, Any], what: str, *, required: bool = False) -> None:
    """Raise ``ValueError`` naming ``what`` when ``options`` holds a keyword ``target`` does not take.

    ``target`` is a class (its ``__init__`` is read) or a function; ``*args`` / ``**kwargs`` are not
    options. With ``required=True`` a missing option without a default raises too.
    """
    fn = target.__init__ if inspect.isclass(target) else target
    params = {
        k: p
        for k, p in inspect.signature(fn).parameters.items()
        if k != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {what}; valid options: {list(params)}")
    if required:
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in options]
        if missing:
            raise ValueError(f"{what} requires option(s) {missing}; valid options: {list(params)}")
