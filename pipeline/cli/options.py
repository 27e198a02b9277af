"""Config dataclasses as command-line options: each field of a config class becomes `--field-name`,
with the help text written once on the field (pipeline/configs.py `doc`).

An option left out is None, so a command can layer its config: class defaults < `--config` files
< the options given. Contradictions are found by the dataclasses' own validation.
"""
from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from pipeline.configs import field_default, field_help


def _cli_type(hint: Any) -> tuple[type, Callable[[Any], Any]]:
    """The option's type and the conversion back to the field's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:  # tuple[str, ...] is given comma-separated
        return str, lambda v: tuple(x.strip() for x in v.split(",") if x.strip())
    if args and typing.get_origin(hint) is not tuple:  # `int | None`
        return args[0], lambda v: v
    return hint, lambda v: v


def _shown(default: Any) -> str:
    return ",".join(default) if isinstance(default, tuple) else str(default)


def config_options(*classes: type, exclude: tuple[str, ...] = (),
                   panel: str = "{name}") -> Callable[[Callable], Callable]:
    """Decorate a typer command `f(..., overrides: dict)`: every field of `classes` (less `exclude`)
    becomes an option, listed under `panel` (formatted with the class name) in `--help`; `f`
    receives the fields that were given on the command line in `overrides`."""

    def wrap(func: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(func, eval_str=True).parameters.values() if p.name != "overrides"]
        generated, convert = [], {}
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                if f.name in exclude or f.name in convert:
                    continue
                typ, convert[f.name] = _cli_type(hints[f.name])
                option = typer.Option(None, help=field_help(f), show_default=_shown(field_default(f)),
                                      rich_help_panel=panel.format(name=cls.__name__))
                generated.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                   annotation=typ | None))

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in convert}
            return func(**kwargs, overrides={k: convert[k](v) for k, v in given.items() if v is not None})

        params = own + generated
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap


def read_config_files(paths: list[Path] | None) -> dict[str, Any]:
    """The fields set by `--config` JSON files (flat objects of field names; later files win)."""
    merged: dict[str, Any] = {}
    for path in paths or []:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must hold a JSON object of field names")
        merged.update(data)
    return merged


def split_fields(values: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Route {field: value} to each class by field name; a name no class has is an error."""
    parts = [{k: v for k, v in values.items() if k in {f.name for f in fields(c)}} for c in classes]
    unknown = set(values) - {k for p in parts for k in p}
    if unknown:
        names = " or ".join(c.__name__ for c in classes)
        raise ValueError(f"unknown config fields {sorted(unknown)} (not fields of {names})")
    return parts
