"""Graph edits: the building blocks of recipes.

Every edit is a function that takes a Model (never mutating it) and returns an
:class:`Edited`: the new model, the verification report that proves what the edit
promises, and what the edit did. ``surgeon.<edit>(...)`` re-exports them.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from surgeon.compare import DiffReport
from surgeon.model import Model

# The recorder of the recipe run in progress (see surgeon.recipe_runner), if any.
RECORDER: ContextVar = ContextVar("surgeon_recorder", default=None)


@dataclass(frozen=True)
class Edited:
    """The result of one edit.

    Attributes:
        model: The new model (the input model is untouched).
        report: The verification of the edit (None only when verification was skipped
            on request, e.g. ``verify=False``).
        edit: The edit's name (``"tap"``, ``"extract"``, ...), as recorded in provenance.
        params: The parameters it ran with.
        details: What the edit did, for reports (e.g. the connections a merge made).
    """

    model: Model
    report: DiffReport | None
    edit: str
    params: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # `surgeon run` watches the edits a recipe makes: each new result is reported to
        # the active recorder (none outside a run), which may stop the recipe on failure.
        recorder = RECORDER.get()
        if recorder is not None:
            recorder.record(self)

    @property
    def passed(self) -> bool:
        """True when verification passed (or was skipped)."""
        return self.report is None or self.report.passed

    def __bool__(self) -> bool:
        return self.passed
