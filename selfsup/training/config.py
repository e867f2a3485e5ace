"""Python config files built with fiddle, with dotted command-line overrides.

A config file is a Python module that defines ``config``, an ``fdl.Config`` of
:class:`selfsup.training.experiment.Experiment` made of lazy calls with real imports.
A variant imports another config file and edits attributes (see ``config/``).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import fiddle as fdl
from fiddle import printing
from fiddle.experimental import serialization

from selfsup.io import atomic_write_text
from selfsup.training.experiment import Experiment


def load_config(path: str | Path) -> fdl.Config:
    """Import a config file and return a copy of its ``config`` (an ``fdl.Config``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file defines no ``config`` of an ``Experiment``.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    repo_root = _repo_root_of(path)
    if repo_root is not None and str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    if repo_root is not None and path.parent == repo_root / "config":
        module = importlib.import_module(f"config.{path.stem}")  # so variants share modules
    else:
        spec = importlib.util.spec_from_file_location(f"selfsup_user_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    cfg = getattr(module, "config", None)
    if not isinstance(cfg, fdl.Config) or not _builds_experiment(cfg):
        raise ValueError(f"config file {str(path)!r} must define `config = fdl.Config(Experiment, ...)`")
    return copy.deepcopy(cfg)


def _repo_root_of(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / "config" / "__init__.py").is_file() and (parent / "selfsup").is_dir():
            return parent
    return None


def _builds_experiment(cfg: fdl.Config) -> bool:
    fn = fdl.get_callable(cfg)
    return isinstance(fn, type) and issubclass(fn, Experiment)


def parse_value(raw: str) -> Any:
    """Parse an override value: a Python literal (``64``, ``(160, 256)``, ``None``,
    ``'x'``), ``true`` / ``false``, or else the raw string."""
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_overrides(cfg: fdl.Config, overrides: list[str]) -> fdl.Config:
    """Apply ``key.path=value`` overrides in place, e.g. ``train.steps=200`` or
    ``model.loss_weights.rgb=0.2``.

    Raises:
        ValueError: an override is not of the form ``a.b=value`` or names an unknown field.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected KEY.PATH=VALUE")
        parts = key.strip().split(".")
        node: Any = cfg
        for depth, name in enumerate(parts[:-1]):
            node = _child(node, name, ".".join(parts[: depth + 1]))
        _assign(node, parts[-1], parse_value(raw), key)
    return cfg


def _child(node: Any, name: str, where: str) -> Any:
    if isinstance(node, dict):
        if name not in node:
            raise ValueError(f"override: {where!r} is not a key; known keys: {sorted(node)}")
        return node[name]
    if isinstance(node, fdl.Buildable):
        if name not in _argument_names(node):
            raise ValueError(f"override: {where!r} is not an argument of {_name(node)}; known: {_argument_names(node)}")
        return getattr(node, name)
    raise ValueError(f"override: cannot descend into {where!r} (a {type(node).__name__})")


def _assign(node: Any, name: str, value: Any, key: str) -> None:
    if isinstance(node, dict):
        if name not in node:
            raise ValueError(f"override: {key!r}: no key {name!r}; known keys: {sorted(node)}")
        node[name] = value
    elif isinstance(node, fdl.Buildable):
        if name not in _argument_names(node):
            raise ValueError(f"override: {key!r}: {_name(node)} has no argument {name!r}; known: {_argument_names(node)}")
        setattr(node, name, _coerce(node, name, value))
    else:
        raise ValueError(f"override: {key!r}: cannot set a field on a {type(node).__name__}")


def _coerce(node: fdl.Buildable, name: str, value: Any) -> Any:
    """``train.grad_clip=0`` means 0.0 where the argument is annotated ``float``."""
    annotation = node.__signature_info__.parameters[name].annotation
    if isinstance(value, int) and not isinstance(value, bool) and annotation in (float, "float", "float | None"):
        return float(value)
    return value


def _argument_names(node: fdl.Buildable) -> list[str]:
    return list(node.__signature_info__.parameters)


def _name(node: fdl.Buildable) -> str:
    fn = fdl.get_callable(node)
    return getattr(fn, "__qualname__", repr(fn))


def config_to_json(cfg: fdl.Config) -> str:
    """The resolved config as fiddle JSON (reloadable with :func:`config_from_json`)."""
    return serialization.dump_json(cfg, indent=1)


def config_from_json(text: str) -> fdl.Config:
    return serialization.load_json(text)


def config_to_text(cfg: fdl.Config) -> str:
    """One ``path = value`` line per setting, for people."""
    return printing.as_str_flattened(cfg)


def save_config(cfg: fdl.Config, work_dir: str | Path) -> None:
    """Write ``config.json`` (reloadable) and ``config.txt`` (readable) into ``work_dir``."""
    work_dir = Path(work_dir)
    atomic_write_text(work_dir / "config.json", config_to_json(cfg))
    atomic_write_text(work_dir / "config.txt", config_to_text(cfg) + "\n")
