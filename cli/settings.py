"""The config file (fp16guard.toml, or [tool.fp16guard] in pyproject.toml) as the validate
command's defaults, and the settings a run records in report.json with where each came from."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from fp16guard.errors import InputError

#: ctx.meta keys (shared by every context of a run): the config file applied, and whether the
#: target came from it.
CONFIG_META, TARGET_FROM_CONFIG_META = "fp16guard.core.config", "fp16guard.target_from_config"

#: Options that say how a run printed, not what it validated: left out of the recorded settings.
_NOT_RECORDED = ("quiet", "as_json", "debug")


def config_defaults(ctx, command, config, target: str) -> dict:
    """The config file's values keyed by ``command``'s parameter names, each checked by its
    option's own type (a choice, a range) as if typed on the command line."""
    from fp16guard.io.config_file import option_name

    params = {param.name: param for param in command.params}
    defaults = {}
    for key, value in config.values.items():
        if key == "target":
            continue
        param = params.get(option_name(key))
        if param is None:
            raise InputError(f"{config.where}: {key} does not apply to `fp16guard validate {target}`")
        try:
            param.process_value(ctx, value)
        except typer.BadParameter as exc:
            raise InputError(f"{config.where}: {key} = {value!r}: {exc.message}") from None
        defaults[param.name] = value
    return defaults


def recorded_settings(ctx: typer.Context) -> dict:
    """Every option of the running validate command with its value and where it came from:
    "default", "config:PATH", "environment" or "command line" (report.json ``settings``)."""
    config = ctx.meta.get(CONFIG_META)
    origin = {
        "COMMANDLINE": "command line",
        "ENVIRONMENT": "environment",
        "DEFAULT_MAP": config.source if config is not None else "default",
    }
    from_config = ctx.meta.get(TARGET_FROM_CONFIG_META)
    recorded = {"target": {"value": ctx.info_name, "source": config.source if from_config else "command line"}}
    for param in ctx.command.params:
        if param.name in _NOT_RECORDED:
            continue
        source = ctx.get_parameter_source(param.name)
        recorded[_key(param)] = {
            "value": _plain(ctx.params.get(param.name)), "source": origin.get(getattr(source, "name", None), "default"),
        }
    return recorded


def _key(param) -> str:
    """A parameter's long option name without dashes in front: its key in config files and in
    the report's ``settings``."""
    return max(param.opts, key=len).lstrip("-")


def _plain(value):
    """A parameter value as JSON data."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
