"""Graph edits: the building blocks of recipes.

Every edit is a function that takes a Model (never mutating it) and returns an
:class:`Edited`: the new model, the verification report that proves what the edit
promises, and what the edit did. ``surgeon.<edit>(...)`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from surgeon.compare import DiffReport
from surgeon.model import Model


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

    @property
    def passed(self) -> bool:
        """True when verification passed (or was skipped)."""
        return self.report is None or self.report.passed

    def __bool__(self) -> bool:
        return self.passed
