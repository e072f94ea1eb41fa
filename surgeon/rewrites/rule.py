"""What a rewrite rule is (:class:`Rule`), and how rules are found by name or loaded from
a user's file (:func:`load_rule`).

A rule is any object with a ``name``, a one-line ``summary``, an ``exact`` flag (True
when the rewritten model gives bit-identical outputs, False when they agree within
tolerance: a different order of floating-point operations), and two methods:

- ``matches(graph) -> list[Match]``: every node it would rewrite, and every node of its
  kind it cannot (a :class:`~surgeon.rewrites.graph.Match` with a ``refusal``);
- ``apply(graph, match) -> None``: build the replacement with the graph's builders; it
  must produce every output of the matched nodes that something else reads, under the
  same names.

Built-in rules are listed in :data:`surgeon.rewrites.RULES`; a user's rule is given as
``path/to/my_rule.py:MyRule`` (a class, instantiated without arguments, or an instance).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Protocol, runtime_checkable

from surgeon.errors import SurgeonError, UsageError, did_you_mean
from surgeon.rewrites.graph import Match, RewriteGraph


@runtime_checkable
class Rule(Protocol):
    """A rewrite rule (see the module docstring)."""

    name: str
    summary: str
    exact: bool

    def matches(self, graph: RewriteGraph) -> list[Match]: ...

    def apply(self, graph: RewriteGraph, match: Match) -> None: ...


def _builtin(name: str):
    from surgeon.rewrites import RULES

    module, _, attr = RULES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def is_builtin(rule) -> bool:
    """True for an instance of one of the built-in rule classes."""
    return type(rule).__module__.startswith("surgeon.rewrites.")


def check_rule(rule, label: str):
    """``rule`` if it has what a rule needs, else a SurgeonError that lists what is missing."""
    missing = [
        attr for attr in ("name", "summary", "exact", "matches", "apply") if not hasattr(rule, attr)
    ]
    missing += [
        m for m in ("matches", "apply") if hasattr(rule, m) and not callable(getattr(rule, m))
    ]
    if missing:
        raise SurgeonError(
            f"rule {label} is not a rewrite rule: it lacks {', '.join(sorted(set(missing)))}",
            hint="A rule has name, summary, exact, matches(graph) and apply(graph, match); "
            "see surgeon.rewrites.rule.",
        )
    if not isinstance(rule.name, str) or not rule.name:
        raise SurgeonError(f"rule {label}: `name` must be a non-empty string")
    return rule


def load_rule(spec) -> object:
    """A rule from a built-in name, ``path.py:ClassName``, or a rule object.

    Raises:
        UsageError: An unknown name (with close matches) or a value that is no rule spec.
        SurgeonError: The file does not exist, fails to import, or lacks the class, or
            the object is not a rule.
    """
    from surgeon.rewrites import RULES

    if not isinstance(spec, str):
        if isinstance(spec, type):
            raise UsageError(
                f"rule {spec.__name__} is a class; give an instance: {spec.__name__}()"
            )
        return check_rule(spec, type(spec).__name__)
    if spec in RULES:
        return _builtin(spec)
    path_text, sep, attr = spec.rpartition(":")
    if not sep or not path_text.endswith(".py"):
        hint = did_you_mean(spec, RULES)
        raise UsageError(
            f"no rewrite rule `{spec}`" + (f"; {hint}" if hint else ""),
            hint=f"The built-in rules: {', '.join(RULES)}; or your own as "
            "path/to/my_rule.py:MyRule.",
        )
    path = Path(path_text)
    if not path.is_file():
        raise SurgeonError(f"rule file {path_text} does not exist (from `{spec}`)")
    name = f"surgeon_user_rule_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise SurgeonError(f"cannot import rule file {path_text}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - a user's module may raise anything on import
        raise SurgeonError(
            f"rule file {path_text} failed to import: {type(e).__name__}: {e}"
        ) from None
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        hint = did_you_mean(attr, names)
        raise SurgeonError(f"rule file {path_text} has no `{attr}`" + (f"; {hint}" if hint else ""))
    value = getattr(module, attr)
    if isinstance(value, type):
        try:
            value = value()
        except Exception as e:  # noqa: BLE001 - a user's class may raise anything
            raise SurgeonError(
                f"rule {spec} failed to instantiate: {type(e).__name__}: {e}"
            ) from None
    return check_rule(value, spec)
