"""The single verifier every edit uses.

An edit states a *correspondence*: which tensor of the edited model (the candidate)
must equal which tensor of a reference, and, for edits such as extract, which reference
tensors feed the candidate's inputs. The reference is a Model (run with onnxruntime,
with intermediate tensors exposed as needed) or a :class:`Chain` of models run in
sequence (what a merge must reproduce).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from surgeon.compare import DiffReport, Tolerance, compare_named, extra
from surgeon.errors import SurgeonError, close_matches, did_you_mean
from surgeon.feeds import FeedOptions, describe_feeds, make_feeds
from surgeon.model import Model
from surgeon.runner import BorrowedWeights, RunOptions, Session, run


@dataclass
class Chain:
    """Models run one after another, as a reference for a merge.

    ``links[i]`` maps an input of ``models[i + 1]`` to a tensor name produced by an earlier
    model (or a feed). Inputs not in the map are taken by equal name. Results of step ``i``
    are available as ``"name"`` (later steps win) and as ``"<i>:name"``; intermediate
    tensors of a step are computed when asked for by either form.
    """

    models: Sequence[Model]
    links: Sequence[Mapping[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " -> ".join(m.name for m in self.models)

    @property
    def first(self) -> Model:
        return self.models[0]

    def compute(
        self, feeds: Mapping[str, np.ndarray], names: Iterable[str], options: RunOptions
    ) -> dict[str, np.ndarray]:
        env: dict[str, np.ndarray] = dict(feeds)
        wanted = list(names)
        for i, model in enumerate(self.models):
            link = self.links[i - 1] if i > 0 and i - 1 < len(self.links) else {}
            step_feeds = {}
            for inp in model.input_names:
                source = link.get(inp, inp)
                if source not in env:
                    raise SurgeonError(
                        f"step {i + 1} ({model.name}) of the reference chain needs input `{inp}`, "
                        f"but nothing before it produces `{source}`"
                    )
                step_feeds[inp] = env[source]
            # Expose the intermediate tensors asked for ("t" or "<i>:t") besides the outputs.
            available = set(model.tensor_names()) - set(model.input_names)
            prefix = f"{i}:"
            asked = [n[len(prefix) :] if n.startswith(prefix) else n for n in wanted]
            outputs = list(model.output_names) + [n for n in asked if n in available]
            values = run(model, step_feeds, outputs=list(dict.fromkeys(outputs)), options=options)
            for k, v in values.items():
                env[k] = v
                env[f"{i}:{k}"] = v
        return {n: env[n] for n in wanted if n in env}


def _compute(
    reference: Model | Chain, feeds, names, options, overlap: _Overlap | None = None
) -> dict[str, np.ndarray]:
    """The reference's values of ``names`` on ``feeds``; ``overlap`` (a Model reference)
    is told once its session is built, or failed to be."""
    if isinstance(reference, Chain):
        return reference.compute(feeds, names, options)
    available = set(reference.tensor_names())
    wanted = [n for n in dict.fromkeys(names) if n in available]
    try:
        # (Nothing asked, nothing run: onnxruntime reads an empty list as "every output".)
        session = Session(reference, extra_outputs=wanted, options=options) if wanted else None
    except BaseException:
        if overlap is not None:
            overlap.session_failed = True
        raise
    finally:
        if overlap is not None:
            overlap.built.set()
    values = {}
    if session is not None:
        values = session.run(feeds, wanted)
        del session  # gone before the candidate's run (verify's reference_alongside)
    for n in wanted:  # graph inputs asked for by name come straight from the feeds
        if n not in values and n in feeds:
            values[n] = feeds[n]
    return values


class _Overlap:
    """The reference's values computed in a thread (verify's ``reference_alongside``).

    ``built`` is set once the reference's session is built or failed to be (whatever
    else happens, at the latest when the thread ends), ``session_failed`` says which.
    The thread is a daemon: an interrupted caller (Ctrl-C, SIGTERM) does not wait for
    onnxruntime, and the CLI's exit does not either.
    """

    def __init__(self, reference: Model, feeds, names, options) -> None:
        self.reference = reference
        self.built = threading.Event()
        self.session_failed = False
        self._outcome: dict = {}
        self._thread = threading.Thread(
            target=self._work,
            args=(reference, feeds, names, options),
            name="surgeon-reference",
            daemon=True,
        )
        self._thread.start()

    def _work(self, reference, feeds, names, options) -> None:
        try:
            self._outcome["value"] = _compute(reference, feeds, names, options, self)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            self._outcome["error"] = e
        finally:
            self.built.set()

    def result(self) -> dict[str, np.ndarray]:
        """Wait for the values (or raise the reference's error)."""
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]


# (debug starts the plain run of the untapped model itself, see reference_started)
Overlap = _Overlap

_STARTED: contextvars.ContextVar[_Overlap | None] = contextvars.ContextVar(
    "surgeon_reference_started", default=None
)


@contextlib.contextmanager
def reference_started(overlap: _Overlap | None) -> Iterator[None]:
    """Within this block, :func:`verify` of ``overlap``'s reference model takes that
    thread's values (an :class:`Overlap` the caller started earlier on the same feeds,
    for the reference tensors verify compares) instead of running the reference: so its
    run also overlaps the caller's own work before verify (debug's tap check overlaps
    the typing and the statistics model's making). Not a parameter of verify: an
    internal thread is no part of the public call."""
    token = _STARTED.set(overlap)
    try:
        yield
    finally:
        _STARTED.reset(token)


_NOTHING_COMPARED = "nothing was compared: there was no (candidate, reference) tensor pair"


def _compare_pairs(actual, expected, pairs, feeds, tolerance) -> tuple[dict, list]:
    """(``actual`` with the candidate names that are graph inputs taken from ``feeds``,
    the pairs compared): what :func:`verify` and :func:`tap_check_report` both report."""
    actual = dict(actual)
    for c, _ in pairs:  # inputs passed straight through
        if c not in actual and c in feeds:
            actual[c] = feeds[c]
    return actual, compare_named(actual, expected, pairs, tolerance)


def tap_check_report(
    model: Model,
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    feeds: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    title: str,
) -> DiffReport:
    """The report :func:`verify` gives for a tapped copy of ``model`` against ``model``,
    from values already computed: ``actual`` (the copy's original outputs) and
    ``expected`` (a plain run's), each output compared with itself, on ``feeds``."""
    pairs = [(o, o) for o in model.output_names]
    _, tensors = _compare_pairs(actual, expected, pairs, feeds, tolerance)
    notes = [] if tensors else [_NOTHING_COMPARED]
    described, seed = _feed_sources(model, feeds, FeedOptions(), False)
    return DiffReport(
        title=title,
        candidate=model.name,
        reference=model.name,
        tensors=tensors,
        tolerance=tolerance,
        seed=seed,
        feeds=described,
        notes=notes,
    )


def verify(
    candidate: Model,
    reference: Model | Chain,
    *,
    pairs: Iterable[tuple[str, str]] | None = None,
    name_map: Mapping[str, str] | None = None,
    candidate_inputs: Mapping[str, str] | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    feed_options: FeedOptions = FeedOptions(),
    tolerance: Tolerance = Tolerance(),
    options: RunOptions | None = None,
    reference_options: RunOptions | None = None,
    title: str = "verify",
    report_extra: bool = True,
    fetch: Iterable[str] = (),
    collect: dict[str, np.ndarray] | None = None,
    reference_last: bool = False,
    candidate_initializers: Mapping[str, np.ndarray] | BorrowedWeights | None = None,
    reference_alongside: bool = False,
) -> DiffReport:
    """Run ``reference`` and ``candidate`` on the same feeds and compare tensors.

    Args:
        candidate: The edited model.
        reference: The original model, or a Chain of models run in sequence.
        pairs: ``(candidate_tensor, reference_tensor)`` pairs to compare. Default: every
            reference output with the candidate output of the same name (after
            ``name_map``), plus the candidate's outputs that have no reference as
            ``extra`` (when ``report_extra``).
        name_map: Reference name -> candidate name, for renamed tensors.
        candidate_inputs: Candidate input -> reference tensor whose value feeds it (e.g.
            the cut points of an extracted subgraph). Other candidate inputs take the
            feed of the same name.
        feeds: Values for the reference's inputs; generated from ``feed_options`` if None.
        tolerance: When values count as equal (use ``surgeon.compare.EXACT`` for
            bit-identity).
        options, reference_options: onnxruntime settings for each side (the reference
            uses ``options`` unless told otherwise).
        fetch: More candidate tensors to compute in the same run (not compared).
        collect: When given, receives every candidate tensor of that run by name, so a
            caller (e.g. debug) can use the verified run's values without a second run.
        reference_last: Run the candidate first and the reference after it (only when no
            candidate input is fed from a reference tensor). For a candidate whose run
            costs more memory than the reference's, so its peak does not stack on the
            heap the reference's run left behind (debug's statistics model ran so until
            it took ``reference_alongside``).
        candidate_initializers: Weights the candidate's proto leaves out, handed to
            onnxruntime as arrays (``surgeon.runner.Session``'s ``initializers``).
        reference_alongside: Run a reference Model in a thread while the candidate's
            session is built (not a Chain, not when a candidate input is fed from a
            reference tensor, not with ``reference_last``): the reference's session is
            built first, then its run overlaps the candidate's build on two cores, and
            it is gone before the candidate runs. Errors are the sequential order's. For
            models whose weights are small: for that moment both sessions hold them.
            A thread the caller started earlier for this reference (see
            :func:`reference_started`) is taken instead of a new one.

    Returns:
        A DiffReport; truthy when every pair matched and there was at least one (with
        no pair at all the report fails: a check that compared nothing proves nothing).
    """
    options = options or RunOptions()
    reference_options = reference_options or options
    ref_model = reference.first if isinstance(reference, Chain) else reference
    name_map = dict(name_map or {})
    made = feeds is None
    if made:
        feeds = make_feeds(ref_model, feed_options)
    feeds = dict(feeds)
    if pairs is None:
        ref_outputs = (
            [n for m in reference.models[-1:] for n in m.output_names]
            if isinstance(reference, Chain)
            else ref_model.output_names
        )
        pairs = [(name_map.get(r, r), r) for r in ref_outputs]
        extras = (
            [o for o in candidate.output_names if o not in {c for c, _ in pairs}]
            if report_extra
            else []
        )
    else:
        pairs = list(pairs)
        extras = []
    candidate_inputs = dict(candidate_inputs or {})
    problems = []
    for inp in candidate_inputs:
        # A misspelt key would be ignored and the input fed by name instead: refuse it.
        if inp not in candidate.input_names:
            hint = did_you_mean(inp, candidate.input_names)
            problems.append(
                f"candidate_inputs names `{inp}`, which is not an input of {candidate.name}"
                + (f"; {hint}" if hint else "")
            )
    if problems:
        raise SurgeonError(
            f"cannot verify {candidate.name} against {reference.name}", problems=problems
        )
    ref_needed = [r for _, r in pairs] + list(candidate_inputs.values())
    cand_names = set(candidate.tensor_names())
    wanted = list(
        dict.fromkeys([c for c, _ in pairs if c in cand_names] + [e for e in extras] + list(fetch))
    )
    # By default the reference runs first, then the candidate's session is built: one
    # session at a time, so a model's weights are held once (see surgeon.weights).
    # reference_alongside overlaps the two on two cores instead.
    reference_last = reference_last and not candidate_inputs
    overlap = None
    expected: dict[str, np.ndarray] = {}
    started = _STARTED.get()
    if started is not None and started.reference is reference:
        overlap = started
        overlap.built.wait()
        if overlap.session_failed:
            overlap.result()  # its error, as the sequential order gives it
    elif reference_alongside and not reference_last and not candidate_inputs:
        if isinstance(reference, Model):  # (a chain builds a session per model: in turn)
            # Its session is built first (session creations take turns, see
            # surgeon.runner.CREATE_LOCK); its run then overlaps the candidate's build.
            overlap = _Overlap(reference, feeds, ref_needed, reference_options)
            overlap.built.wait()
            if overlap.session_failed:
                overlap.result()  # its error, as the sequential order gives it
    if overlap is None and not reference_last:
        expected = _compute(reference, feeds, ref_needed, reference_options)
    try:
        session = Session(
            candidate, extra_outputs=wanted, options=options, initializers=candidate_initializers
        )
    except Exception:
        # The reference's run is waited for (its error dropped): a program that ends
        # with onnxruntime still running in another thread aborts in its teardown. An
        # interruption (Ctrl-C, SIGTERM) is not waited for.
        if overlap is not None:
            with contextlib.suppress(Exception):
                overlap.result()
        raise
    if overlap is not None:
        expected = overlap.result()  # the reference's session is gone before the candidate runs

    cand_feeds = {}
    problems = []
    renamed_from = {v: k for k, v in name_map.items()}  # candidate name -> reference name
    for inp in candidate.input_names:
        source = candidate_inputs.get(inp)
        if source is not None:
            if source not in expected:
                problems.append(f"the reference does not produce `{source}` to feed `{inp}`")
            else:
                cand_feeds[inp] = expected[source]
        elif inp in renamed_from and renamed_from[inp] in feeds:
            # A renamed input takes the value of its reference name, even when another
            # reference input has its new name (a swap: a->b, b->a).
            cand_feeds[inp] = feeds[renamed_from[inp]]
        elif inp in feeds and inp not in name_map:
            cand_feeds[inp] = feeds[inp]
        else:
            near = close_matches(inp, feeds)
            problems.append(
                f"candidate input `{inp}` has no value: it is not a reference input and not mapped"
                + (
                    "; reference inputs like it: " + ", ".join(f"`{n}`" for n in near)
                    if near
                    else ""
                )
            )
    if problems:
        raise SurgeonError(
            f"cannot verify {candidate.name} against {reference.name}",
            problems=problems,
            hint="Map renamed inputs (name_map; --map REF=CANDIDATE on the command line) or say "
            "which reference tensor "
            "feeds each candidate input (candidate_inputs).",
        )

    notes = []
    # The same values in the candidate's input dtype, e.g. a float16 conversion checked
    # against its float32 original (the comparison then happens in the reference dtype).
    declared = {i.name: i.dtype for i in candidate.inputs}
    for inp, value in list(cand_feeds.items()):
        want = declared.get(inp)
        if (
            want
            and isinstance(value, np.ndarray)
            and value.dtype.kind in "fiub"
            and value.dtype.name != want
        ):
            try:
                cand_feeds[inp] = value.astype(want)
            except TypeError:
                continue
            notes.append(f"input `{inp}` fed as {want} (the reference's is {value.dtype.name})")
    actual = session.run(cand_feeds, wanted) if wanted else {}
    if collect is not None:
        collect.update(actual)
    if reference_last:
        # Only the compared outputs are kept; the rest of the candidate's values (the
        # caller's, in collect) and its session go before the reference runs.
        del session
        kept = {c for c, _ in pairs} | set(extras)
        actual = {name: value for name, value in actual.items() if name in kept}
        expected = _compute(reference, feeds, ref_needed, reference_options)
    actual, tensors = _compare_pairs(actual, expected, pairs, cand_feeds, tolerance)
    tensors += [extra(e, actual.get(e)) for e in extras]
    if not tensors:  # the report fails (zero compared tensors is never a pass): say why
        notes.append(_NOTHING_COMPARED)
    if options.optimization != reference_options.optimization:
        notes.append(
            f"candidate ran with optimization={options.optimization}, reference with optimization={reference_options.optimization}"
        )
    described, seed = _feed_sources(ref_model, feeds, feed_options, made)
    return DiffReport(
        title=title,
        candidate=candidate.name,
        reference=reference.name,
        tensors=tensors,
        tolerance=tolerance,
        seed=seed,
        feeds=described,
        notes=notes,
    )


def _feed_sources(
    model: Model, feeds: Mapping[str, np.ndarray], options: FeedOptions, made: bool
) -> tuple[dict[str, dict], int | None]:
    """The report's feeds (shape, dtype and where each value came from: ``file`` for the
    ``.npz``, ``random`` for one made from the seed, ``given`` for the caller's own
    values) and its seed: None only when no value depended on it (every input from the
    file).

    Feeds passed in with ``options.npz`` set were made by surgeon from those options
    (an edit making them at its own sizes): their other values are the seed's.
    """
    from surgeon.npz import read_npz_index

    from_file = set(read_npz_index(options.npz)) if options.npz else set()
    seeded = made or bool(options.npz)
    described = describe_feeds(feeds)
    for name, entry in described.items():
        entry["from"] = "file" if name in from_file else "random" if seeded else "given"
    every_input_from_file = not (set(model.input_names) - from_file)
    return described, None if options.npz and every_input_from_file else options.seed
