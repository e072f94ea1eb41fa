"""Running recipes: Python modules that script a sequence of verified edits.

A recipe module has a docstring (its first line is its summary), an optional ``PARAMS``
dict declaring typed parameters, ``{name: (type, default, help)}`` with ``...`` as the
default of a required parameter, and one entry point::

    def recipe(models: list[surgeon.Model], **params) -> Edited | Model | dict[str, Edited | Model]

and two declarations of what it needs and writes, checked before any work (see
:class:`Needs`): ``MODELS``, the models it takes (a count, or a tuple of role names where a
trailing ``?`` marks an optional one: ``("model", "reference?")``), and ``OUTPUTS``, the
names of the models it writes (``()`` for a recipe that only reports; one name: saved to
``-o OUT.onnx``; several: to ``-o FOLDER/`` as ``<name>.onnx``). ``MODELS_HELP`` says in
a sentence what the models are, for the error when the count is wrong.

While it runs, every edit surgeon makes for it is recorded as a step (see
:mod:`surgeon.recipe_steps`; an edit the recipe verifies by hand is recorded with
:func:`record_edit`); the first step whose verification fails stops the recipe, unless
``keep_going``. A recipe that reports findings (``find_first_nan``, ``compare_layers``)
records each report as a *check* step, either by returning it or with
:func:`record_check` mid-run: a check that finds something (a NaN born in the model, a
layer that diverges) fails the run like a failed edit, with the report's verdict. A single result is saved to ``-o OUT.onnx``; a dict of results (e.g. the
two halves of a split) to ``-o FOLDER/`` as ``<key>.onnx``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from surgeon.edits import Edited
from surgeon.errors import SurgeonError, UsageError, VerificationFailed, did_you_mean
from surgeon.model import Model
from surgeon.recipe_steps import (  # noqa: F401 - re-exported: record_check is public API
    RECORDER,
    RUN_OPTIONS,
    Recorder,
    Step,
    _failure_message,
    record_check,
    record_edit,
)

RUN_SCHEMA = "surgeon.run/1"
REQUIRED = ...


def recipes_package() -> ModuleType:
    """The cookbook package, ``surgeon.recipes``.

    Installed, it is a subpackage. Run from a source checkout (``python -m surgeon`` in
    the repository, where ``surgeon/`` shadows the installed package), it lives at the
    top-level ``recipes/`` folder: it is loaded from there under the same name.
    """
    try:
        return importlib.import_module("surgeon.recipes")
    except ModuleNotFoundError as e:
        if e.name != "surgeon.recipes":
            raise
    folder = Path(__file__).resolve().parent.parent / "recipes"
    init = folder / "__init__.py"
    if not init.is_file():
        raise SurgeonError(
            "the built-in recipes are not installed (surgeon.recipes is missing); reinstall surgeon"
        )
    spec = importlib.util.spec_from_file_location(
        "surgeon.recipes", init, submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["surgeon.recipes"] = module
    spec.loader.exec_module(module)
    return module


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe name -> summary line (from ``surgeon.recipes.BUILTIN``)."""
    return dict(recipes_package().BUILTIN)


def load_recipe(spec: str) -> tuple[str, ModuleType]:
    """Import a recipe: a ``.py`` file, or a built-in recipe by name.

    Raises:
        SurgeonError: No such file or built-in (with close matches), the module fails to
            import, or it defines no ``recipe`` function.
    """
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise SurgeonError(f"recipe file {spec} does not exist")
        name = f"surgeon_user_recipe_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise SurgeonError(f"cannot import recipe {spec}: not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        label = path.name
        loader = lambda: module_spec.loader.exec_module(module)  # noqa: E731
    else:
        names = builtin_recipes()
        if spec not in names:
            hint = did_you_mean(spec, names)
            raise SurgeonError(
                f"no recipe `{spec}`: not a file and not a built-in recipe"
                + (f"; {hint}" if hint else ""),
                hint="Run `surgeon recipes` to list the built-in recipes, or give a path to a .py file.",
            )
        label = spec
        module = None
        loader = None
    try:
        if module is None:
            recipes_package()
            module = importlib.import_module(f"surgeon.recipes.{spec}")
        else:
            sys.modules[module.__name__] = module
            loader()
    except SurgeonError:
        raise
    except Exception as e:  # noqa: BLE001 - a user's module may raise anything on import
        raise SurgeonError(f"recipe {label} failed to import: {_where(e)}") from None
    if not callable(getattr(module, "recipe", None)):
        raise SurgeonError(f"recipe {label} defines no `recipe(models, **params)` function")
    params = getattr(module, "PARAMS", {})
    if not isinstance(params, Mapping) or any(
        not (isinstance(v, tuple) and len(v) == 3) for v in params.values()
    ):
        raise SurgeonError(f"recipe {label}: PARAMS must map each name to (type, default, help)")
    recipe_needs(module, label)  # a bad MODELS/OUTPUTS declaration is found at load time
    return label, module


@dataclass(frozen=True)
class Needs:
    """What a recipe takes and writes, from its ``MODELS`` and ``OUTPUTS``.

    Attributes:
        models: Role names of the models it takes, in order (``"model"`` when it
            declared only a count); ``None`` when it declared nothing (then it takes one
            or more, the rule before recipes declared it).
        required: How many of ``models`` must be given (the rest are optional).
        outputs: Names of the models it writes; ``()`` for a recipe that only reports;
            ``None`` when undeclared (the names are known only once it returns).
        help: ``MODELS_HELP``, what the models are, or "".
    """

    models: tuple[str, ...] | None
    required: int
    outputs: tuple[str, ...] | None
    help: str = ""

    def accepts(self, count: int) -> bool:
        """Whether ``count`` models fit."""
        if self.models is None:
            return count >= 1
        return self.required <= count <= len(self.models)

    def describe_models(self) -> str:
        """``no model``, ``1 model (detector)``, ``1 or 2 models (model, reference?)``."""
        if self.models is None:
            return "one or more models"
        if not self.models:
            return "no model"
        low, high = self.required, len(self.models)
        count = (
            str(high)
            if low == high
            else f"{low} or {high}"
            if high == low + 1
            else f"{low} to {high}"
        )
        roles = ", ".join(m if i < low else f"{m}?" for i, m in enumerate(self.models))
        plural = f"{count} model{'' if high == 1 else 's'}"
        # role names only when they say more than "model"
        return plural if set(self.models) == {"model"} and low == high else f"{plural} ({roles})"

    def to_dict(self) -> dict:
        return {
            "models": None
            if self.models is None
            else [{"name": m, "required": i < self.required} for i, m in enumerate(self.models)],
            "outputs": None if self.outputs is None else list(self.outputs),
            "models_help": self.help,
        }


def recipe_needs(module: ModuleType, label: str) -> Needs:
    """Read a recipe's ``MODELS``, ``OUTPUTS`` (or the older ``PRODUCES = "report"``) and
    ``MODELS_HELP``.

    Raises:
        SurgeonError: A declaration of the wrong form (a bug in the recipe file).
    """
    declared = getattr(module, "MODELS", None)
    if declared is None:
        models, required = None, 1
    elif isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
        models, required = ("model",) * declared, declared
    elif isinstance(declared, tuple) and all(isinstance(m, str) and m.strip("?") for m in declared):
        optional = [m.endswith("?") for m in declared]
        if optional != sorted(optional):
            raise SurgeonError(
                f"recipe {label}: MODELS lists a required model after an optional one"
            )
        models, required = tuple(m.rstrip("?") for m in declared), optional.count(False)
    else:
        raise SurgeonError(
            f'recipe {label}: MODELS must be a count or a tuple of names like ("model", "reference?")'
        )
    outputs = getattr(module, "OUTPUTS", None)
    if outputs is None and getattr(module, "PRODUCES", None) == "report":
        outputs = ()
    if isinstance(outputs, str):
        outputs = (outputs,)
    if outputs is not None:
        import os

        if (
            not isinstance(outputs, tuple)
            or any(
                not isinstance(o, str)
                or not o
                or o in (".", "..")
                or os.path.basename(o) != o
                or "\\" in o
                for o in outputs
            )
            or len(set(outputs)) != len(outputs)
        ):
            raise SurgeonError(
                f'recipe {label}: OUTPUTS must be a tuple of distinct plain file names like ("before", "after")'
            )
    return Needs(models, required, outputs, str(getattr(module, "MODELS_HELP", "") or ""))


def check_model_count(module: ModuleType, label: str, count: int) -> Needs:
    """Before any work: the number of models given fits what the recipe takes.

    Raises:
        UsageError: Too many or too few, saying what the recipe takes and why.
    """
    needs = recipe_needs(module, label)
    if needs.accepts(count):
        return needs
    what = needs.describe_models()
    got = "none" if count == 0 else str(count)
    message = f"recipe {label} takes {what}, got {got}"
    if needs.models == ():
        message = f"recipe {label} takes no model, got {count}"
    raise UsageError(
        message + (f": {needs.help}" if needs.help else ""),
        hint="Run `surgeon recipes` to see what each recipe takes and writes.",
    )


def _where(e: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame of an exception."""
    tb = traceback.extract_tb(e.__traceback__)
    place = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{place}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_params(module: ModuleType, label: str, items: list[str]) -> dict:
    """Check ``key=value`` strings against the recipe's PARAMS and convert them.

    Raises:
        UsageError: Unknown keys, values of the wrong type, or missing required
            parameters; all listed at once, with the accepted parameters.
    """
    declared = dict(getattr(module, "PARAMS", {}))
    values: dict = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"`{item}` is not key=value")
            continue
        if key not in declared:
            hint = did_you_mean(key, declared)
            problems.append(f"unknown parameter `{key}`" + (f"; {hint}" if hint else ""))
            continue
        kind = declared[key][0]
        try:
            if kind is bool:
                low = raw.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError
                values[key] = low in _TRUE
            else:
                values[key] = kind(raw)
        except (TypeError, ValueError):
            problems.append(
                f"parameter `{key}` wants {getattr(kind, '__name__', kind)}, got `{raw}`"
            )
    for key, (_, default, _) in declared.items():
        if default is REQUIRED and key not in values:
            problems.append(f"parameter `{key}` is required")
    if problems:
        accepted = "; ".join(
            f"{k} ({getattr(t, '__name__', t)}{'' if d is REQUIRED else f', default {d!r}'}): {h}"
            for k, (t, d, h) in declared.items()
        )
        raise UsageError(
            f"bad parameters for recipe {label}",
            problems=problems,
            hint=f"Accepted: {accepted}" if declared else f"Recipe {label} takes no parameters.",
        )
    return values


@dataclass
class RunResult:
    """What ``run_recipe`` produced."""

    recipe: str
    params: dict
    steps: list[Step]
    outputs: dict[str, Model] = field(default_factory=dict)
    reports: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and all(s.passed for s in self.steps)
            and all(bool(r) for r in self.reports)
        )

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        return {
            "schema": RUN_SCHEMA,
            "recipe": self.recipe,
            "params": self.params,
            "passed": self.passed,
            "error": self.error,
            "seconds": round(self.seconds, 4),
            "steps": [s.to_dict() for s in self.steps],
            "outputs": sorted(self.outputs),
            "reports": [r.to_dict() for r in self.reports],
        }


def _is_report(value) -> bool:
    return (
        hasattr(value, "to_dict")
        and hasattr(value, "passed")
        and not isinstance(value, (Edited, Model))
    )


def _normalise(result, label: str, single: str = "result") -> tuple[dict[str, Model], list, dict]:
    """Split a recipe's return value into models to save, reports to show and what each
    model was returned as (its Edited, or the bare Model); a single model is keyed
    ``single`` (the recipe's one declared output)."""
    models: dict[str, Model] = {}
    reports: list = []
    returned: dict = {}

    def one(value, key):
        if isinstance(value, (Edited, Model)):
            returned[key] = value
        if isinstance(value, Edited):
            models[key] = value.model
        elif isinstance(value, Model):
            models[key] = value
        elif _is_report(value):
            reports.append(value)
        else:
            raise SurgeonError(
                f"recipe {label} returned {type(value).__name__} for `{key}`; expected an Edited, a Model or a report"
            )

    if isinstance(result, Mapping):
        for k, v in result.items():
            one(v, str(k))
    elif isinstance(result, (list, tuple)) and result:
        one(result[-1], single)
    elif result is not None and not isinstance(result, (list, tuple)):
        one(result, single)
    if not models and not reports:
        raise SurgeonError(
            f"recipe {label} returned nothing: it must return an Edited, a Model, a dict of them, or a report"
        )
    return models, reports, returned


def run_recipe(
    label: str,
    module: ModuleType,
    models: list[Model],
    params: dict,
    *,
    keep_going: bool = False,
    options=None,
) -> RunResult:
    """Run a loaded recipe, recording its steps; ``options`` (RunOptions) are what its
    edits verify with when the recipe passes none.

    Raises:
        VerificationFailed: A step failed (exit 1), unless ``keep_going``.
        SurgeonError: The recipe raised a user error, or crashed (its exception is
            named with file and line; the traceback is shown with ``--traceback``).
    """
    recorder = Recorder(keep_going)
    token = RECORDER.set(recorder)
    options_token = RUN_OPTIONS.set(options)
    start = time.perf_counter()
    result = RunResult(label, params, recorder.steps)
    try:
        value = module.recipe(models, **params)
    except VerificationFailed as e:
        e.result = result  # the CLI shows the steps that ran
        raise
    except SurgeonError as e:
        step = len(recorder.steps) + 1
        e.message = f"recipe {label}, step {step} (after {len(recorder.steps)} verified step(s)): {e.message}"
        e.result = result
        raise
    except Exception as e:  # noqa: BLE001 - a recipe's bug: reported with file and line
        err = SurgeonError(
            f"recipe {label} raised {_where(e)}", hint="Rerun with --traceback to see where."
        )
        err.result = result
        err.__cause__ = e
        raise err from e
    finally:
        RECORDER.reset(token)
        RUN_OPTIONS.reset(options_token)
        result.seconds = time.perf_counter() - start
    needs = recipe_needs(module, label)
    single = needs.outputs[0] if needs.outputs and len(needs.outputs) == 1 else "result"
    result.outputs, result.reports, returned = _normalise(value, label, single)
    if needs.outputs is not None and set(result.outputs) != set(needs.outputs):
        # The CLI planned its files from OUTPUTS before the work: a recipe that writes
        # something else breaks that plan, so nothing is saved.
        raise SurgeonError(
            f"recipe {label} declares OUTPUTS {', '.join(needs.outputs) or '(none)'} but returned "
            f"{', '.join(result.outputs) or 'no model'}",
            hint="Make OUTPUTS in the recipe file name exactly the models it returns.",
        )
    # Nothing unverified is saved: a model handed back without a verified edit (e.g.
    # edited with onnx-graphsurgeon directly), returned with a failed report, or changed
    # after its verification is a step that cannot pass.
    for key, model in result.outputs.items():
        problem = recorder.unsaveable(key, model, returned[key])
        if problem is not None:
            recorder.steps.append(
                Step(
                    index=len(recorder.steps) + 1,
                    edit="unverified result",
                    params={"output": key},
                    passed=False,
                    summary=problem,
                    seconds=0.0,
                )
            )
    # A report the recipe hands back is a check of its own, counted as a step like an
    # edit (a finding is a failed step, not an edit that failed).
    for report in result.reports:
        if not any(report is r for r in recorder.checked):
            recorder.record_check(report, stop=False)
    if not result.passed and not keep_going:
        failed = next((s for s in recorder.steps if not s.passed), None)
        message = (
            _failure_message(failed)
            if failed is not None
            else f"recipe {label} failed: {result.error}"
        )
        err = VerificationFailed(message)
        err.result = result
        raise err
    for model in result.outputs.values():
        model.add_provenance(f"recipe:{label}", params)
    return result
