"""No blind ``except`` that can hide a bug in surgeon/ or recipes/.

A handler for ``Exception``, ``BaseException`` or everything (bare ``except:``) must
either re-raise (cleanup on the way out, e.g. removing a temp file, hides nothing) or
say why on its line with ``# noqa: BLE001 - <why>`` (onnx and onnxruntime raise arbitrary
types; the CLI's internal-error boundary). This is ruff's BLE001 rule, which the project
will select in pyproject.toml once every module keeps it; until then this test lists the
handlers left, and is expected to fail.
"""

from __future__ import annotations

import ast

from conftest import ROOT

BROAD = {"Exception", "BaseException"}


def _is_broad(handler: ast.ExceptHandler) -> bool:
    kind = handler.type
    if kind is None:
        return True
    names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
    return any(isinstance(n, ast.Name) and n.id in BROAD for n in names)


def _reraises(handler: ast.ExceptHandler) -> bool:
    """A bare ``raise`` (or ``raise ... from`` the caught exception) among the handler's
    own statements, outside nested functions: the exception goes on, nothing is hidden."""
    name = handler.name
    for node in handler.body:
        for inner in ast.walk(node):
            if isinstance(inner, ast.Raise):
                if inner.exc is None:
                    return True
                if name and isinstance(inner.exc, ast.Name) and inner.exc.id == name:
                    return True
    return False


def blind_handlers(paths, root=ROOT) -> list[str]:
    """``file:line`` of each blind handler, in file and line order."""
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.ExceptHandler) or not _is_broad(node):
                continue
            if "noqa: BLE001" in lines[node.lineno - 1] or _reraises(node):
                continue
            found.append((path.relative_to(root).as_posix(), node.lineno))
    return [f"{file}:{line}" for file, line in sorted(found)]


def _sources():
    for folder in ("surgeon", "recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if folder == "surgeon" and "recipes" in path.relative_to(ROOT / folder).parts:
                continue  # the symlink to recipes/, listed once
            yield path


def test_the_finder_tells_blind_handlers_from_others(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "try:\n    pass\nexcept Exception:\n    pass\n"  # 3: blind
        "try:\n    pass\nexcept:\n    pass\n"  # 7: blind
        "try:\n    pass\nexcept (ValueError, BaseException):\n    pass\n"  # 11: blind
        "try:\n    pass\nexcept Exception:  # noqa: BLE001 - a reason\n    pass\n"
        "try:\n    pass\nexcept BaseException:\n    cleanup()\n    raise\n"
        "try:\n    pass\nexcept Exception as e:\n    raise e\n"
        "try:\n    pass\nexcept ValueError:\n    pass\n",
        encoding="utf-8",
    )
    assert blind_handlers([source], root=tmp_path) == ["m.py:3", "m.py:7", "m.py:11"]


def test_no_blind_except_in_surgeon_or_recipes():
    assert blind_handlers(_sources()) == []
