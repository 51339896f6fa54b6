"""Every subpackage is installed: pyproject.toml lists packages one by one, and a subpackage missing
from the list works in an editable install (the tests) but is absent from a wheel."""

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_in_the_packages_list():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fp16guard").rglob("__init__.py")}
    found |= {"fp16guard.data", "fp16guard_cli"}  # installed from data/ and cli/ (package-dir)
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "listed packages that do not exist"
