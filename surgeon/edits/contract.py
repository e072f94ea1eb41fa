"""The edit contract: the one place that turns a change of a model into a verified edit.

Every edit (tap, extract, rename, merge, reshape_io) is written as three things: a
*plan* (checking its arguments, before anything is built), a *change* (what it does to a
copy of the model) and a *correspondence* (what "unchanged" means for it: which tensor
of the edited model must equal which tensor of a reference). :func:`apply_edit` owns the
rest, the same way for all of them:

1. copy the model, so the input is never touched, and apply the change to the copy (a
   copy of kilobytes: weights that load left on disk are references, not bytes);
2. append one provenance record (edit name, parameters, surgeon version);
3. run the single verifier (:func:`surgeon.verification.verify`) with the edit's
   correspondence and the caller's feeds, tolerance and onnxruntime settings;
4. return a frozen :class:`~surgeon.edits.Edited`, and hand it to the recorder of the
   recipe run in progress, if any (:func:`surgeon.recipe_steps.record_edit`: the one
   call that records edits; a failed step stops the run there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from surgeon.compare import EXACT, DiffReport, Tolerance
from surgeon.edits import Edited
from surgeon.feeds import FeedOptions
from surgeon.model import Model
from surgeon.runner import RunOptions

# What a change may give back: None (it edited the copy it was handed), a new
# ModelProto, or a new Model (when the result should not keep the input's path, e.g. a
# merge of two models).
ChangeResult = onnx.ModelProto | Model | None


@dataclass(frozen=True)
class Correspondence:
    """What "unchanged" means for an edit, as arguments of the verifier.

    Attributes:
        title: The report's title (``"tap: original outputs unchanged"``).
        pairs: ``(edited_tensor, reference_tensor)`` pairs; None: every reference output
            with the edited output of the same name (after ``name_map``).
        reference: What the edited model must reproduce; None: the input model. A
            :class:`~surgeon.verification.Chain` for a merge.
        name_map: Reference name -> edited name, for renamed tensors.
        candidate_inputs: Edited input -> reference tensor whose value feeds it (the cut
            points of an extract).
        tolerance: When values count as equal; bit-identity unless the edit says otherwise.
        feeds: The edit's own inputs for the check (e.g. made for the merged model's
            inputs); None: the caller's.
        unavailable: Why values cannot be compared at all (then the report holds no row
            but this note, and the edit's ``finish`` may add rows of its own).
    """

    title: str
    pairs: Sequence[tuple[str, str]] | None = None
    reference: object | None = None
    name_map: Mapping[str, str] | None = None
    candidate_inputs: Mapping[str, str] | None = None
    tolerance: Tolerance = EXACT
    feeds: Mapping[str, np.ndarray] | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class Check:
    """How the caller asked for the verification to run.

    Attributes:
        enabled: False skips it (the result's report is None).
        feeds, feed_options: The reference's inputs, or how to make them.
        options: onnxruntime settings for both sides.
        tolerance: The caller's tolerance; None: the edit's own (its correspondence's,
            bit-identity unless the edit says otherwise).
    """

    enabled: bool = True
    feeds: Mapping[str, np.ndarray] | None = None
    feed_options: FeedOptions = field(default_factory=FeedOptions)
    options: RunOptions | None = None
    tolerance: Tolerance | None = None


def apply_edit(
    model: Model,
    edit: str,
    params: Mapping,
    change: Callable[[onnx.ModelProto], ChangeResult],
    correspond: Callable[[Model], Correspondence],
    *,
    check: Check = Check(),
    label: str | None = None,
    copy: bool = True,
    details: Callable[[Model, DiffReport | None], dict] | None = None,
    finish: Callable[[Model, DiffReport, Mapping[str, np.ndarray]], DiffReport | None]
    | None = None,
) -> Edited:
    """Apply ``change`` to a copy of ``model``, record provenance, verify, return the result.

    Args:
        model: The input model; never modified.
        edit: The edit's name, as provenance and reports show it.
        params: The parameters it ran with (recorded in provenance, JSON-able).
        change: Edits the ModelProto it is given in place (and returns None), or returns
            a new ModelProto or Model.
        correspond: Given the edited model, what the verification compares (called only
            when the check is enabled, after the change and before any run).
        check: The caller's verification settings.
        label: The report names the edited model ``"<input name> (<label>)"``; None
            keeps the edited model's own name.
        copy: False hands ``change`` the input's own proto, to read only, for changes
            that build a new proto from parts of it (copying all weights first would be
            a waste); the change must then return a new proto or Model.
        details: What the edit did, for reports, from the edited model and the report.
        finish: Adds to the report after the comparison (notes, rows of a runtime
            check), given the edited model's computed tensors; a report it returns
            replaces the comparison's (an edit whose verdict is more than the rows).

    Returns:
        A frozen Edited; falsy when the verification failed.

    Raises:
        VerificationFailed: Inside a recipe run, the verification failed and the run
            does not keep going.
    """
    source = model.proto
    if copy:
        source = onnx.ModelProto()
        source.CopyFrom(model.proto)
    out = change(source)
    if out is None and not copy:
        raise TypeError(f"the change of edit {edit} must return its new model (copy=False)")
    if out is model.proto or (isinstance(out, Model) and out.proto is model.proto):
        raise TypeError(f"the change of edit {edit} returned the input model itself")
    if isinstance(out, Model):
        edited = out
    else:
        edited = model.with_proto(source if out is None else out)
    edited.add_provenance(edit, params)
    report = _verify(model, edited, correspond, check, label, finish) if check.enabled else None
    result = Edited(
        edited,
        report,
        edit,
        dict(params),
        details(edited, report) if details is not None else {},
    )
    from surgeon.recipe_steps import record_edit  # the runner's module imports edits

    return record_edit(result)


def _verify(
    model: Model,
    edited: Model,
    correspond: Callable[[Model], Correspondence],
    check: Check,
    label: str | None,
    finish: Callable | None,
) -> DiffReport:
    from surgeon.recipe_steps import RUN_OPTIONS
    from surgeon.verification import verify  # verification imports feeds and the runner

    wanted = correspond(edited)
    # Options the caller gave win; else those of the recipe run in progress (`surgeon run
    # --custom-op-library ...`), so a recipe's edits can run models with custom ops.
    options = check.options if check.options is not None else RUN_OPTIONS.get()
    tolerance = check.tolerance if check.tolerance is not None else wanted.tolerance
    values: dict[str, np.ndarray] = {}
    if wanted.unavailable is not None:
        report = DiffReport(
            title=wanted.title,
            candidate=edited.name,
            reference=model.name,
            tensors=[],
            tolerance=tolerance,
            seed=check.feed_options.seed,
            notes=[wanted.unavailable],
        )
    else:
        report = verify(
            edited,
            wanted.reference if wanted.reference is not None else model,
            pairs=wanted.pairs,
            name_map=wanted.name_map,
            candidate_inputs=wanted.candidate_inputs,
            feeds=wanted.feeds if wanted.feeds is not None else check.feeds,
            feed_options=check.feed_options,
            tolerance=tolerance,
            options=options,
            title=wanted.title,
            collect=values if finish is not None else None,
        )
    if label is not None:
        report.candidate = f"{model.name} ({label})"
    if finish is not None:
        replaced = finish(edited, report, values)
        if replaced is not None:  # not `or`: a report is falsy when it failed
            report = replaced
    return report
