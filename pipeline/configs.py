"""What every frozen per-run config dataclass shares: a field documented once (`doc`), validation
that names the class (`check`), and a JSON round trip (`JsonConfig`).

The command line reads the same documentation (pipeline/cli/options.py), so a field's help text
lives only on the field.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, Field, asdict, field, fields
from pathlib import Path
from typing import Any


def doc(default: Any, text: str) -> Any:
    """A dataclass field with its default and its one-line help (shown by `--help`)."""
    return field(default=default, metadata={"help": text})


def field_help(f: Field) -> str:
    return f.metadata.get("help", "")


def field_default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def check(cond: bool, msg: str) -> None:
    """Raise the ValueError a contradictory or out-of-range option gets (one line, said plainly)."""
    if not cond:
        raise ValueError(msg)


class JsonConfig:
    """to_json / from_dict / from_json for a frozen config dataclass (lists read back as tuples)."""

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        check(not unknown, f"{cls.__name__}: unknown fields {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)

    @classmethod
    def from_json(cls, path: Path):
        return cls.from_dict(json.loads(Path(path).read_text()))
