"""The steps of a recipe run: what `surgeon run` records while a recipe works.

A recipe run installs a :class:`Recorder` (``RECORDER``, a ContextVar, so a recipe run
in one thread does not see another's). Two calls feed it, each in one place:

* :func:`record_edit`, which the edit contract (:func:`surgeon.edits.contract.apply_edit`)
  calls once for every edit it finishes, and a recipe calls for an edit it verified by
  hand. Building an :class:`~surgeon.edits.Edited` records nothing: a constructor with a
  side effect made every hand-made result a step, wanted or not.
* :func:`record_check`, for reports of findings (a debug report, a diff).

Outside a recipe run both only return what they were given.

A recorded edit's model is fingerprinted (:func:`fingerprint`) when it is recorded, right
after its verification: :class:`~surgeon.edits.Edited` is frozen only on its surface, and
a recipe that edits ``edited.model.proto`` afterwards would otherwise have the changed
model saved under the old verdict.
"""

from __future__ import annotations

import hashlib
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
# The onnxruntime settings of the recipe run in progress (`surgeon run`'s
# --custom-op-library and --optimization): what an edit verifies with when the recipe
# passes no options of its own (read by surgeon.edits.contract).
RUN_OPTIONS: ContextVar = ContextVar("surgeon_run_options", default=None)


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
        # (model, fingerprint when recorded, step) for every recorded edit, in order
        self.verified: list[tuple[Model, bytes, Step]] = []
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
        self.verified.append((edited.model, fingerprint(edited.model.proto), step))
        if not step.passed and not self.keep_going:
            raise VerificationFailed(
                f"step {step.index} ({step.edit}) failed verification: {summary}", report=report
            )

    def unsaveable(self, key: str, model: Model, returned) -> str | None:
        """Why the output ``key`` (``model``, returned as ``returned``: an Edited or a
        bare Model) must not be saved, or None when its verification vouches for it.

        It must come from a recorded edit whose verification ran and passed, be returned
        as a passing result, and be unchanged since that verification.
        """
        from surgeon.edits import Edited  # surgeon.edits imports nothing from here

        if isinstance(returned, Edited) and not returned.passed:
            what = returned.report.summary() if returned.report is not None else "failed"
            return f"`{key}` was returned with a failed verification ({returned.edit}: {what})"
        entry = next((e for e in reversed(self.verified) if e[0] is model), None)
        if entry is None:
            return (
                f"`{key}` was not produced by a verified edit (return the Edited, not a bare Model)"
            )
        _, digest, step = entry
        if step.report is None:
            return f"`{key}` comes from step {step.index} ({step.edit}), which ran with verification off"
        if fingerprint(model.proto) != digest:
            return (
                f"`{key}` changed after its verification in step {step.index} ({step.edit}): "
                "the recipe edited the model afterwards; make that change an edit, or verify "
                "it and record it with record_edit"
            )
        return None

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


# Tensors up to this many bytes are hashed whole; larger ones by their length and
# _SAMPLES evenly spread 4 KiB slices. Hashing every byte costs a copy and a hash of all
# weights per step (on the order of a second per GB); the slices catch a tensor replaced,
# resized or rewritten, which is how an edit changes weights, for a fixed cost.
_WHOLE = 1 << 20
_SAMPLES = 16
_SLICE = 4096


def fingerprint(proto) -> bytes:
    """A digest of what a model computes: its graphs (nodes with their attributes,
    subgraphs included, inputs, outputs, value_info), opsets and initializers (names,
    types, shapes, external-data references and their bytes, large ones sampled).
    Metadata (provenance) is left out: recording provenance is not a change of the model.
    """
    h = hashlib.blake2b(digest_size=20)
    for opset in proto.opset_import:
        h.update(f"opset {opset.domain}:{opset.version};".encode())
    _graph(h, proto.graph)
    for function in proto.functions:
        h.update(function.SerializeToString())
    return h.digest()


def _graph(h, graph) -> None:
    for init in graph.initializer:
        _tensor(h, init)
    for sparse in graph.sparse_initializer:
        h.update(sparse.SerializeToString())
    for part in (graph.input, graph.output, graph.value_info):
        for value in part:
            h.update(value.SerializeToString())
    for node in graph.node:
        h.update(f"node {node.domain}:{node.op_type}:{node.name}:".encode())
        h.update("\0".join(list(node.input) + ["->"] + list(node.output)).encode())
        for attr in node.attribute:
            # graphs and tensors walked (a big Constant sampled like a weight); any other
            # attribute is small and serialised whole
            if attr.HasField("g"):
                h.update(f"attr {attr.name}:graph;".encode())
                _graph(h, attr.g)
            elif attr.HasField("t"):
                h.update(f"attr {attr.name}:tensor;".encode())
                _tensor(h, attr.t)
            elif len(attr.graphs):
                h.update(f"attr {attr.name}:graphs;".encode())
                for sub in attr.graphs:
                    _graph(h, sub)
            else:
                h.update(attr.SerializeToString())


def _tensor(h, tensor) -> None:
    h.update(f"tensor {tensor.name}:{tensor.data_type}:{list(tensor.dims)};".encode())
    for entry in tensor.external_data:
        h.update(f"{entry.key}={entry.value};".encode())
    raw = tensor.raw_data
    if raw:
        h.update(len(raw).to_bytes(8, "little"))
        if len(raw) <= _WHOLE:
            h.update(raw)
        else:
            step = (len(raw) - _SLICE) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                h.update(raw[i * step : i * step + _SLICE])
        return
    # typed fields (float_data, int64_data, ...): small in practice, serialised whole
    h.update(tensor.SerializeToString())
