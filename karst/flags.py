"""Command-line flags derived from settings declarations (``karst.config.setting``).

``karst train`` and ``karst bench`` both call :func:`add_setting_flags`, so a setting that declares
a ``flag`` gets it with its help, its default and its type checks, written nowhere else.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterable
from typing import Any

from .config import FieldSpec, parse_value
from .errors import ConfigError

__all__ = ["add_setting_flags", "flag_values"]


def _flag_value(spec: FieldSpec, raw: str) -> Any:
    try:
        return raw if spec.kind == "list" else parse_value(spec, raw)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_setting_flags(parser: argparse.ArgumentParser, specs: Iterable[FieldSpec], *, defaults: bool = False) -> None:
    """One flag per spec that declares one; ``dest`` is the setting's path.

    Args:
        parser: where to add the flags.
        specs: the settings (``karst.config.field_specs(cls)``).
        defaults: give each flag the setting's default; False leaves unset flags None, so that a
            config file underneath can supply them.
    """
    for spec in specs:
        if spec.flag is None:
            continue
        default = ",".join(spec.default) if spec.kind == "list" and spec.default else spec.default
        if spec.kind == "bool":  # the flag switches away from the default (--random-init, --no-memory)
            parser.add_argument(spec.flag, dest=spec.path, action="store_const", const=not spec.default,
                                default=spec.default if defaults else None,
                                help=f"{spec.help} (sets it to {'false' if spec.default else 'true'})")
            continue
        shown = "" if default is None else f" (default {default})"
        metavar = "{" + ",".join(spec.choices) + "}" if spec.choices else spec.name.upper()
        parser.add_argument(spec.flag, dest=spec.path, type=functools.partial(_flag_value, spec), metavar=metavar,
                            nargs="+" if spec.kind == "list" else None,
                            default=(list(spec.default) if spec.kind == "list" else spec.default) if defaults else None,
                            help=spec.help + shown)


def flag_values(args: argparse.Namespace, specs: Iterable[FieldSpec]) -> dict[str, Any]:
    """The flags that were given (or defaulted), by setting path; list values split on commas too."""
    out = {}
    for spec in specs:
        value = getattr(args, spec.path, None) if spec.flag is not None else None
        if value is None:
            continue
        if spec.kind == "list":
            value = tuple(v.strip() for item in value for v in str(item).split(",") if v.strip())
        out[spec.path] = value
    return out
