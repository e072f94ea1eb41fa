"""Every package folder under surgeon/ is listed in pyproject.toml's explicit package list,
so a non-editable ``pip install .`` carries it (a folder left out installs a surgeon that
fails on import)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "surgeon").rglob("__init__.py")
        if not init.parent.is_symlink() and "recipes" not in init.parent.relative_to(ROOT).parts
    }
    assert found <= listed, sorted(found - listed)
