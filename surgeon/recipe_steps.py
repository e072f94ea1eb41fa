"""The steps of a recipe run: what `surgeon run` records while a recipe works.

A recipe run installs a :class:`Recorder` (``RECORDER``, a ContextVar, so a recipe run
in one thread does not see another's). Two calls feed it, each in one place:

* :func:`record_edit`, which the edit contract (:func:`surgeon.edits.contract.apply_edit`)
  calls once for every edit it finishes, and a recipe calls for an edit it verified by
  hand. Building an :class:`~surgeon.edits.Edited` records nothing: a constructor with a
  side effect made every hand-made result a step, wanted or not.
* :func:`record_check`, for reports of findings (a debug report, a diff).

Outside a recipe run both only return what they were given.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from surgeon.errors import VerificationFailed
from surgeon.model import Model, _jsonable

if TYPE_CHECKING:  # a type only: surgeon.edits imports nothing from here
    from surgeon.edits import Edited

# The recorder of the recipe run in progress (see surgeon.recipe_runner), if any.
RECORDER: ContextVar = ContextVar("surgeon_recorder", default=None)


@dataclass
class Step:
    """One edit a recipe made."""

    index: int
    edit: str
    params: dict
    passed: bool
    summary: str
    seconds: float
    report: dict | None = None
    kind: str = "edit"  # "edit" (a verified edit) or "check" (a report of findings)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "kind": self.kind,
            "edit": self.edit,
            "params": self.params,
            "passed": self.passed,
            "summary": self.summary,
            "seconds": round(self.seconds, 4),
            "report": self.report,
        }


class Recorder:
    """Collects the edits of a run; raises on the first failed verification."""

    def __init__(self, keep_going: bool = False):
        self.keep_going = keep_going
        self.steps: list[Step] = []
        self.models: list[Model] = []  # every model a verified edit produced
        self.checked: list = []  # every report recorded as a check
        self._last = time.perf_counter()

    def record(self, edited: Edited) -> None:
        """Record a finished edit as a step.

        Raises:
            VerificationFailed: Its verification failed and the run does not keep going.
        """
        now = time.perf_counter()
        report = edited.report
        if report is None:
            summary = "not verified"
        else:
            summary = report.summary()
        step = Step(
            index=len(self.steps) + 1,
            edit=edited.edit,
            params=_jsonable(edited.params),
            passed=edited.passed,
            summary=summary,
            seconds=now - self._last,
            report=report.to_dict() if report is not None else None,
        )
        self._last = now
        self.steps.append(step)
        self.models.append(edited.model)
        if not step.passed and not self.keep_going:
            raise VerificationFailed(
                f"step {step.index} ({step.edit}) failed verification: {summary}", report=report
            )

    def record_check(self, report, name: str | None = None, *, stop: bool = True) -> Step:
        """Record a report of findings (truthy when nothing was found) as a check step.

        Raises:
            VerificationFailed: The check found something, ``stop`` is set and the run
                does not keep going.
        """
        now = time.perf_counter()
        step = Step(
            index=len(self.steps) + 1,
            edit=name or _check_name(report),
            params={},
            passed=bool(report),
            summary=_report_summary(report),
            seconds=now - self._last,
            report=report.to_dict(),
            kind="check",
        )
        self._last = now
        self.steps.append(step)
        self.checked.append(report)
        if not step.passed and stop and not self.keep_going:
            raise VerificationFailed(_failure_message(step), report=report)
        return step


def _check_name(report) -> str:
    if hasattr(report, "stats") and hasattr(report, "verdict"):
        return "debug"
    return type(report).__name__


def _report_summary(report) -> str:
    for attr in ("verdict", "summary"):
        if callable(getattr(report, attr, None)):
            return str(getattr(report, attr)())
    return "found something" if not report else "nothing found"


def _failure_message(step: Step) -> str:
    if step.kind == "check":
        return f"step {step.index} (check: {step.edit}) found a problem: {step.summary}"
    return f"step {step.index} ({step.edit}) failed: {step.summary}"


def record_check(report, name: str | None = None):
    """Record ``report`` (a DebugReport, a DiffReport, any object with ``to_dict`` that
    is truthy when nothing was found) as a check step of the recipe run in progress, and
    return it. A failed check stops the run (exit 1) unless ``--keep-going``. Outside a
    recipe run it only returns the report. A report the recipe returns is recorded the
    same way, once."""
    recorder = RECORDER.get()
    if recorder is not None:
        recorder.record_check(report, name)
    return report


def record_edit(edited: Edited) -> Edited:
    """Record ``edited`` as a step of the recipe run in progress, and return it.

    Every edit surgeon makes is recorded by the edit contract; a recipe calls this for an
    edit it made and verified itself (``Edited(model, report, "my-edit")``). A failed
    verification stops the run (exit 1) unless ``--keep-going``. Outside a recipe run it
    only returns ``edited``.
    """
    recorder = RECORDER.get()
    if recorder is not None:
        recorder.record(edited)
    return edited
