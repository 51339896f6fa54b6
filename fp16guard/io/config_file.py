"""The project's config file: ``fp16guard.toml``, or ``[tool.fp16guard]`` in pyproject.toml.

Keys are the long names of ``fp16guard validate``'s options (``min-cosine``, ``try``, ...) plus
``target``; paths are relative to the file's directory. This module only reads and type-checks
the file (no torch); the CLI applies it under the options the user passed."""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fp16guard.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_FILE = "fp16guard.toml"
PYPROJECT = "pyproject.toml"

#: Every key a config file may hold, with the TOML types it accepts. A value's range or choice
#: (a device name, a positive budget) is checked by the option it fills, as on the command line.
KEYS: dict[str, tuple[type, ...]] = {
    "target": (str,),
    "model": (str,),
    "weights": (str,),
    "sequences": (str,),
    "pooling": (str,),
    "trust-remote-code": (bool,),
    "offline": (bool,),
    "device": (str,),
    "reference-device": (str,),
    "gpus": (int,),
    "max-tokens": (int, str),
    "max-length": (int,),
    "layer": (int,),
    "min-cosine": (float, int),
    "min-knn-overlap": (float, int),
    "min-rank-correlation": (float, int),
    "probe": (str,),
    "labels": (str,),
    "fp64-floor": (bool,),
    "policy": (str,),
    "no-fallback": (bool,),
    "full-ladder": (bool,),
    "try": (list,),
    "save-policy": (str,),
    "save-reference": (str,),
    "reference": (str,),
    "profile": (bool,),
    "search": (bool,),
    "careful-timing": (bool,),
    "out": (str,),
}
#: Keys naming files or directories: resolved against the config file's directory.
PATH_KEYS = frozenset({"weights", "sequences", "save-policy", "save-reference", "reference", "out", "probe", "labels"})
TARGETS = ("esm2", "hf", "dnabert", "antiberty")

_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "a list of strings"}


@dataclass(frozen=True)
class ConfigFile:
    """The settings one file holds (``path`` None: no config file was found)."""

    path: Path | None = None
    values: dict[str, object] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The file (and table) named in error messages."""
        return f"{self.path}" + (" [tool.fp16guard]" if self.path is not None and self.path.name == PYPROJECT else "")

    @property
    def source(self) -> str:
        """How the report names this file as a setting's origin."""
        return f"config:{self.path}"

    @property
    def target(self) -> str | None:
        return self.values.get("target")  # type: ignore[return-value]

    def options(self) -> dict[str, object]:
        """The option values, keyed by the option's parameter name (``min_cosine``, ``also_try``)."""
        return {option_name(key): value for key, value in self.values.items() if key != "target"}


def option_name(key: str) -> str:
    """The CLI parameter a key fills: ``min-cosine`` -> ``min_cosine``, ``try`` -> ``also_try``."""
    return "also_try" if key == "try" else key.replace("-", "_")


def find_config(directory: str | Path = ".") -> Path | None:
    """``fp16guard.toml`` in ``directory``, else its pyproject.toml when that has a
    ``[tool.fp16guard]`` table, else None."""
    directory = Path(directory)
    dedicated = directory / CONFIG_FILE
    if dedicated.is_file():
        return dedicated
    pyproject = directory / PYPROJECT
    if pyproject.is_file() and "fp16guard" in _read(pyproject).get("tool", {}):
        return pyproject
    return None


def load_config(path: str | Path) -> ConfigFile:
    """Read and type-check one config file; InputError (exit 2) naming the file and the key."""
    path = Path(path).absolute()
    document = _read(path)
    table = document.get("tool", {}).get("fp16guard", {}) if path.name == PYPROJECT else document
    where = ConfigFile(path).where
    if not isinstance(table, dict):
        raise InputError(f"{where}: tool.fp16guard must be a table")
    values: dict[str, object] = {}
    for key, value in table.items():
        values[key] = _check(where, key, value, path.parent)
    return ConfigFile(path=path, values=values)


def discover(directory: str | Path = ".") -> ConfigFile:
    """The config file of ``directory`` (see find_config), or an empty ConfigFile."""
    path = find_config(directory)
    return load_config(path) if path is not None else ConfigFile()


def _read(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None


def _check(where: str, key: str, value: object, base: Path) -> object:
    """The value of one key, type-checked (and a path made absolute)."""
    if key not in KEYS:
        close = difflib.get_close_matches(key.replace("_", "-"), KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(KEYS)}"
        raise InputError(f"{where}: unknown key {key!r}{hint}")
    types = KEYS[key]
    # TOML booleans are Python ints: true is never a number here.
    ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if ok and isinstance(value, list):
        ok = all(isinstance(item, str) for item in value)
    if not ok:
        named = [t for t in types if not (t is int and float in types)]  # an integer is a number
        expected = " or ".join(_TYPE_NAMES[t] for t in named)
        raise InputError(f"{where}: {key} must be {expected}, not {value!r}")
    if key == "max-tokens" and (value != "auto" if isinstance(value, str) else value < 1):
        raise InputError(f"{where}: max-tokens must be a positive integer or \"auto\", not {value!r}")
    if key == "target" and value not in TARGETS:
        raise InputError(f"{where}: target must be one of {', '.join(TARGETS)}, not {value!r}")
    if key in PATH_KEYS:
        return str(base / Path(value).expanduser())  # an absolute path stays as it is
    return value
