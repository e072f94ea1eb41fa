"""Graph edits: the building blocks of recipes.

Every edit is a function that takes a Model (never mutating it) and returns an
:class:`Edited`: the new model, the verification report that proves what the edit
promises, and what the edit did. Each edit is written as a plan, a change and a
correspondence handed to :func:`surgeon.edits.contract.apply_edit`, which owns the rest
(copy, provenance, verification, the frozen result, recording the step of a recipe run).
``surgeon.<edit>(...)`` re-exports them.

Results say what made them: :class:`Edited` for an edit of a model, :class:`Built` for
a model built from nothing (``build_nms``), and a check's own report type for checks
(``check_dynamic`` returns a ``DynamicCheck``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from surgeon.compare import DiffReport
from surgeon.model import Model


@dataclass(frozen=True)
class Edited:
    """The result of one edit.

    Building one records nothing: edits made by surgeon are recorded as steps of a
    recipe run by the edit contract, and a recipe records an edit it verified itself
    with :func:`surgeon.record_edit`.

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


class Built(Model):
    """A model built from nothing (not an edit of another model), e.g. by ``build_nms``.

    It is a :class:`Model` in every way (save it, merge it, run it); the type says that no
    original exists to verify it against, so it carries no report. ``spec`` holds the
    parameters it was built from, as its provenance records them.
    """

    def __init__(self, proto, spec: dict[str, Any] | None = None):
        super().__init__(proto)
        self.spec = dict(spec or {})
