"""What a command did: a library result plus what the command itself did with it.

A command ends with ``return ctx.finish(outcome)``: with ``--json`` the CLI writes
``outcome.to_dict()``, otherwise the renderer that :mod:`surgeon.report.dispatch` lists
for the outcome's type draws it, and ``outcome.passed`` gives the exit status. Library
results that need nothing more (a DiffReport, a DynamicCheck) are finished as they are;
the types here carry what a renderer needs besides the library result: whether a file
was written, where, how many rows to show.

Plain dataclasses, no heavy imports: the ``--json`` path must not load rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EDIT_SCHEMA = "surgeon.edit/1"
MERGE_SCHEMA = "surgeon.merge/1"
NMS_SCHEMA = "surgeon.nms/1"
RECIPES_SCHEMA = "surgeon.recipes/1"


@dataclass(frozen=True)
class EditOutcome:
    """An edit command's result (``surgeon.edit/1``): the edit, and whether -o was written.

    Keys of the document: schema, edit, model, output, written, passed, params, details,
    verification (the DiffReport, schema ``surgeon.diff/1``, or null when verification
    was skipped). ``details`` is the edit's own (see each command's help).
    """

    edited: Any  # surgeon.edits.Edited
    model_path: str
    output: str | None
    written: bool

    @property
    def passed(self) -> bool:
        return self.edited.passed

    def to_dict(self) -> dict:
        edited = self.edited
        return {
            "schema": EDIT_SCHEMA,
            "edit": edited.edit,
            "model": str(self.model_path),
            "output": str(self.output) if self.output else None,
            "written": self.written,
            "passed": edited.passed,
            "params": edited.params,
            "details": edited.details,
            "verification": edited.report.to_dict() if edited.report is not None else None,
        }


# One type per edit command, so the render dispatch needs nothing but the type.
class ExtractOutcome(EditOutcome):
    """What ``surgeon extract`` did."""


class RenameOutcome(EditOutcome):
    """What ``surgeon rename`` did."""


class ReshapeOutcome(EditOutcome):
    """What ``surgeon reshape-io`` did."""


@dataclass(frozen=True)
class DebugOutcome:
    """What ``surgeon debug`` did: the report, the tapped model verified for -o (None when
    -o was not asked for or the taps failed their check), the files written, and the
    number of table rows a person asked for (0: all)."""

    report: Any  # surgeon.debugging.DebugReport
    tapped: Any = None  # surgeon.edits.Edited | None
    written: tuple[str, ...] = ()
    rows: int = 40

    @property
    def passed(self) -> bool:
        return self.report.passed and (self.tapped is None or self.tapped.passed)

    def to_dict(self) -> dict:
        data = self.report.to_dict()
        data["written"] = list(self.written)
        if self.tapped is not None:
            report = self.tapped.report
            data["tapped_model_check"] = report.to_dict() if report else None
        return data


@dataclass(frozen=True)
class InspectOutcome:
    """What ``surgeon inspect`` found (``surgeon.inspect/1``); ``names_only``: the person
    asked for the name listing, and a terminal shows only that."""

    info: dict
    names_only: bool = False
    passed: bool = True

    def to_dict(self) -> dict:
        return self.info


@dataclass(frozen=True)
class NmsOutcome:
    """What ``surgeon nms`` built and wrote (``surgeon.nms/1``).

    Keys of the document: schema, output, params (the NMS's, as recorded in provenance),
    inputs, outputs, nodes, op_types, opset.
    """

    model: Any  # surgeon.model.Model
    params: dict
    output: str | None
    passed: bool = True

    def to_dict(self) -> dict:
        from surgeon.model import op_histogram

        model = self.model
        return {
            "schema": NMS_SCHEMA,
            "output": str(self.output) if self.output is not None else None,
            "params": self.params,
            "inputs": [i.to_dict() for i in model.inputs],
            "outputs": [o.to_dict() for o in model.outputs],
            "nodes": len(model.proto.graph.node),
            "op_types": dict(sorted(op_histogram(model.proto).items())),
            "opset": model.opset,
        }


@dataclass(frozen=True)
class RecipeListing:
    """The built-in recipes (``surgeon.recipes/1``), one dict per recipe."""

    recipes: list[dict]
    passed: bool = True

    def to_dict(self) -> dict:
        return {"schema": RECIPES_SCHEMA, "recipes": self.recipes}


@dataclass(frozen=True)
class MergeOutcome:
    """What ``surgeon merge`` connected and whether -o was written (``surgeon.merge/1``).

    Keys of the document: schema, first, second, output, written, passed, the merge's
    details (connections, renames, opsets), nms (the built NMS's parameters or null) and
    verification (the DiffReport or null).
    """

    first: str
    second: str
    edited: Any  # surgeon.edits.Edited
    output: str | None
    written: bool
    nms: dict | None = None

    @property
    def passed(self) -> bool:
        return self.edited.passed

    @property
    def report(self):
        return self.edited.report

    def to_dict(self) -> dict:
        report = self.edited.report
        return {
            "schema": MERGE_SCHEMA,
            "first": self.first,
            "second": self.second,
            "output": self.output,
            "written": self.written,
            "passed": self.passed,
            **self.edited.details,
            "nms": self.nms,
            "verification": report.to_dict() if report is not None else None,
        }


@dataclass(frozen=True)
class RunOutcome:
    """What ``surgeon run`` did: the recipe's result, the files written, and whether a
    verification stopped the recipe (``failed``; the exit status is then 1)."""

    result: Any  # surgeon.recipe_runner.RunResult
    written: tuple[str, ...] = field(default_factory=tuple)
    failed: bool = False

    @property
    def passed(self) -> bool:
        return self.result.passed and not self.failed

    def to_dict(self) -> dict:
        data = self.result.to_dict()
        data["written"] = list(self.written)
        return data
