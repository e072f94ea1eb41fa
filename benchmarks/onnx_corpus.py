"""Robustness benchmark: onnx's backend node tests as a corpus for surgeon.

onnx's backend node tests are single-operator models (plus "expanded" variants where a
function op is written out as many nodes) with stored inputs. onnx 1.23 builds them in
memory (``onnx.backend.test.loader.load_model_tests(kind="node")``); nothing is
downloaded. For every case that onnxruntime itself can run on the stored inputs, this
script checks three things, each against plain onnxruntime runs made here (not through
surgeon's verifier, which is exercised as well and must agree):

1. load then save through surgeon: the saved model's outputs are bit-identical to the
   untouched model's on the stored inputs;
2. ``tap(model, ["all"])``: surgeon's verification passes, and a plain run of the tapped
   model gives the original outputs bit for bit and produces every tap;
3. ``debug(model)`` (every tensor tapped, statistics mode) on the stored inputs: it
   runs, and its NaN/Inf verdict agrees with one worked out here from a plain run that
   exposes every tensor: the run fails exactly when some node that is not computed from
   constants only turns finite inputs into a NaN/Inf, or inputs without NaN into a NaN
   (``0 * -inf``) (operator tests that divide by zero
   do; the expanded Attention tests, whose ``-inf`` masks come from Constants, do not);
4. ``extract`` of each main-graph node's first output, cut where the node's inputs (and
   the outer-scope tensors its If/Loop/Scan bodies read) depend on a graph input:
   surgeon's verification passes, and the extracted model, fed with the values a plain
   run of the original gives at the cut (exposed by a plain proto edit), reproduces the
   original's value bit for bit.

Every run here uses onnxruntime with graph optimisations off and one thread, so that
"bit-identical" compares the same kernels on the same values. Cases whose untouched model
gives different values on two runs (random ops) are compared by dtype and shape only.

A failure is attributed to surgeon when onnxruntime runs the untouched model but surgeon
refuses it, crashes, writes something onnxruntime runs differently, or its verification
fails where the plain check here passes. One behaviour of onnxruntime is listed but not
attributed: on the CPU it computes chains of float16 ops in float32 and drops the
rounding to float16 between them, except where a tensor is a graph output; so exposing a
tensor (a tap, a cut) moves the last bits of float16 results. Both the plain check and
surgeon's verifier see it (see ``rounding_only``). The script prints: cases tried,
runnable by onnxruntime, passed per step, and every failure with its reason. Exit status
1 when a failure is attributed to surgeon.

    python benchmarks/onnx_corpus.py                 # every case, 2 worker processes
    python benchmarks/onnx_corpus.py --sample 60     # a seeded random subset
    python benchmarks/onnx_corpus.py --match 'test_loop*' --workers 1 -v
"""

from __future__ import annotations

import argparse
import fnmatch
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

STEPS = ("load_save", "tap", "debug", "extract")
CASE_TIMEOUT = 120  # seconds; a case that takes longer is reported as a failure


# ---------------------------------------------------------------------- the corpus
def load_cases() -> list:
    """onnx's node test cases, built in memory by the installed onnx."""
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        # The generators compute expected outputs with numpy, which warns on overflow.
        warnings.simplefilter("ignore")
        return load_model_tests(kind="node")


def select_cases(cases: list, *, match: str | None, sample: int | None, seed: int) -> list:
    """Filter by a glob over case names, then draw a seeded sample."""
    if match:
        cases = [c for c in cases if fnmatch.fnmatchcase(c.name, match)]
    if sample is not None and sample < len(cases):
        cases = random.Random(seed).sample(cases, sample)
        cases.sort(key=lambda c: c.name)
    return cases


# ---------------------------------------------------------------------- results
@dataclass
class Failure:
    case: str
    step: str
    reason: str
    surgeon: bool = True  # False: the corpus or onnxruntime, not surgeon

    def line(self) -> str:
        who = "" if self.surgeon else " [not surgeon]"
        return f"{self.case} / {self.step}{who}: {self.reason}"


@dataclass
class CaseResult:
    """What happened to one case.

    ``runnable`` is False when onnxruntime itself cannot run the untouched model on its
    stored inputs (``skip`` says why). ``steps`` maps each step to ``pass``, ``fail`` or
    ``n/a`` (nothing to do, e.g. a model of Constant nodes only has nothing to extract).
    """

    name: str
    runnable: bool = False
    skip: str = ""
    deterministic: bool = True
    steps: dict[str, str] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    extracts: int = 0
    seconds: float = 0.0
    debug_failed: bool = False  # surgeon debug blames a NaN/Inf born in the model (exit 1)


# ---------------------------------------------------------------------- comparisons
def same_bits(a, b) -> str | None:
    """None when ``a`` and ``b`` are bit-identical (arrays, sequences, optionals, maps),
    else a short description of the first difference."""
    if a is None or b is None:
        return None if a is None and b is None else "one value is None"
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return "different map keys"
        for k in a:
            d = same_bits(a[k], b[k])
            if d:
                return f"[{k!r}] {d}"
        return None
    if isinstance(a, list) or isinstance(b, list):
        if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
            return "different sequence lengths"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = same_bits(x, y)
            if d:
                return f"[{i}] {d}"
        return None
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "OUS":
        return None if a.tolist() == b.tolist() else "string values differ"
    if a.tobytes() != b.tobytes():
        return f"{int(np.sum(a != b))} of {a.size} elements differ"
    return None


def same_structure(a, b) -> str | None:
    """Like :func:`same_bits`, comparing dtype and shape only (for random ops)."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return "different sequence lengths"
        return next((d for x, y in zip(a, b, strict=True) if (d := same_structure(x, y))), None)
    if a is None or b is None or isinstance(a, dict) or isinstance(b, dict):
        return None if type(a) is type(b) else "different kinds of value"
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    return None


# ---------------------------------------------------------------------- plain onnxruntime
def ort_session(source):
    """A plain onnxruntime session: CPU, no graph optimisation, one thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4
    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    return ort.InferenceSession(
        source if isinstance(source, bytes) else str(source), so, providers=["CPUExecutionProvider"]
    )


def with_outputs(proto: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``proto`` with ``names`` added as (untyped) graph outputs; graph inputs
    among them are skipped (they are known without a run)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    have = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for n in dict.fromkeys(names):
        if n not in have:
            out.graph.output.add(name=n)
    return out


# Element types onnxruntime's Python API does not convert from or to numpy (ml_dtypes
# arrays hold them, one element per byte): onnx type name -> (ml_dtypes name, bits per
# element in onnxruntime's packed layout, signed; informative).
RAW_TYPES = {
    "bfloat16": ("bfloat16", 16, False),
    "float8e4m3fn": ("float8_e4m3fn", 8, False),
    "float8e4m3fnuz": ("float8_e4m3fnuz", 8, False),
    "float8e5m2": ("float8_e5m2", 8, False),
    "float8e5m2fnuz": ("float8_e5m2fnuz", 8, False),
    "float8e8m0": ("float8_e8m0fnu", 8, False),
    "int4": ("int4", 4, True),
    "uint4": ("uint4", 4, False),
    "float4e2m1": ("float4_e2m1fn", 4, False),
    "int2": ("int2", 2, True),
    "uint2": ("uint2", 2, False),
}
_ML_TO_ONNX = {ml: onnx_name for onnx_name, (ml, _, _) in RAW_TYPES.items()}
_ONNX_ELEM = {
    "bfloat16": "BFLOAT16",
    "float8e4m3fn": "FLOAT8E4M3FN",
    "float8e4m3fnuz": "FLOAT8E4M3FNUZ",
    "float8e5m2": "FLOAT8E5M2",
    "float8e5m2fnuz": "FLOAT8E5M2FNUZ",
    "float8e8m0": "FLOAT8E8M0",
    "int4": "INT4",
    "uint4": "UINT4",
    "float4e2m1": "FLOAT4E2M1",
    "int2": "INT2",
    "uint2": "UINT2",
}


def _to_ortvalue(value):
    """An OrtValue for ``value``; ml_dtypes arrays are written as raw (packed) bytes."""
    import ctypes

    import onnxruntime as ort

    if value.dtype.name not in _ML_TO_ONNX:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
    onnx_name = _ML_TO_ONNX[value.dtype.name]
    bits = RAW_TYPES[onnx_name][1]
    codes = np.ascontiguousarray(value).reshape(-1).view(np.uint8 if bits <= 8 else np.uint16)
    if bits < 8:  # pack: element i goes to the low bits first
        per = 8 // bits
        codes = (codes & ((1 << bits) - 1)).astype(np.uint8)
        codes = np.concatenate([codes, np.zeros((-len(codes)) % per, np.uint8)])
        codes = codes.reshape(-1, per)
        codes = sum((codes[:, k] << (k * bits)) for k in range(per)).astype(np.uint8)
    raw = codes.tobytes()
    elem = getattr(onnx.TensorProto, _ONNX_ELEM[onnx_name])
    out = ort.OrtValue.ortvalue_from_shape_and_type(list(value.shape), elem)
    if raw:
        ctypes.memmove(out.data_ptr(), raw, min(len(raw), out.tensor_size_in_bytes()))
    return out


def _from_ortvalue(value):
    """numpy (ml_dtypes for the raw types) from an OrtValue."""
    import ctypes

    import ml_dtypes

    kind = value.data_type()  # "tensor(bfloat16)"
    name = kind[len("tensor(") : -1] if kind.startswith("tensor(") else ""
    if name not in RAW_TYPES:
        return value.numpy()
    ml_name, bits, _ = RAW_TYPES[name]
    size = value.tensor_size_in_bytes()
    raw = bytes((ctypes.c_char * size).from_address(value.data_ptr())) if size else b""
    shape = value.shape()
    count = int(np.prod(shape)) if shape else 1
    if bits >= 8:
        codes = np.frombuffer(raw, np.uint8 if bits == 8 else np.uint16)
        return codes.view(getattr(ml_dtypes, ml_name)).reshape(shape).copy()
    packed = np.frombuffer(raw, np.uint8)
    per, mask = 8 // bits, (1 << bits) - 1
    codes = np.stack([(packed >> (k * bits)) & mask for k in range(per)], axis=1).reshape(-1)
    # ml_dtypes keeps the code in the low bits of its byte, signed types included.
    codes = codes[:count].astype(np.uint8)
    return codes.view(getattr(ml_dtypes, ml_name)).reshape(shape).copy()


def ort_run(source, feeds: dict) -> dict:
    """Every output of ``source`` by name, from a fresh plain session. bfloat16 and
    float8 tensors travel as OrtValues (numpy cannot hand them to onnxruntime)."""
    session = ort_session(source)
    names = [o.name for o in session.get_outputs()]
    raw = any(o.type[len("tensor(") : -1] in RAW_TYPES for o in session.get_outputs()) or any(
        isinstance(v, np.ndarray) and v.dtype.name in _ML_TO_ONNX for v in feeds.values()
    )
    tensors_only = all(isinstance(v, np.ndarray) for v in feeds.values())
    if not (raw and tensors_only):
        return dict(zip(names, session.run(names, feeds), strict=True))
    wanted = {i.name for i in session.get_inputs()}
    ort_feeds = {k: _to_ortvalue(v) for k, v in feeds.items() if k in wanted}
    values = session.run_with_ort_values(names, ort_feeds)
    return {n: _from_ortvalue(v) for n, v in zip(names, values, strict=True)}


def as_value(v):
    """A stored value as onnxruntime takes it: arrays, lists of arrays, None."""
    from onnx import numpy_helper

    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, onnx.SequenceProto):
        return [as_value(x) for x in numpy_helper.to_list(v)]
    if isinstance(v, onnx.OptionalProto):
        return as_value(numpy_helper.to_optional(v))
    if isinstance(v, list):
        return [as_value(x) for x in v]
    if v is None or isinstance(v, (dict, np.ndarray)):
        return v
    return np.asarray(v)  # numpy scalars (np.float32(2.0)) become 0-d arrays


def stored_feeds(case) -> dict | None:
    """The first stored data set as {input name: value}, or None when it does not fit."""
    proto = case.model
    inits = {t.name for t in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in inits]
    if not case.data_sets:
        return None
    values = list(case.data_sets[0][0])
    if len(values) != len(names):
        return None
    return {n: as_value(v) for n, v in zip(names, values, strict=True)}


def dynamic_tensors(graph: onnx.GraphProto) -> set[str]:
    """Main-graph tensors that depend on a graph input (the rest are constants)."""
    from surgeon.graph_facts import subgraph_reads

    inits = {t.name for t in graph.initializer}
    dynamic = {v.name for v in graph.input if v.name not in inits}
    for node in graph.node:  # ONNX requires nodes in topological order
        reads = [*node.input, *subgraph_reads(node)]
        if any(x in dynamic for x in reads):
            dynamic.update(o for o in node.output if o)
    return dynamic


LOW_PRECISION = ("float16", "bfloat16")


def rounding_only(a, b) -> bool:
    """True when ``a`` and ``b`` are float16/bfloat16 arrays that differ only by rounding.

    onnxruntime's CPU provider computes chains of float16 ops that lack a float16 kernel
    in float32 (it inserts Casts and then drops the float32 -> float16 -> float32 pairs
    between them). When a tensor of such a chain becomes a graph output (a tap, or the
    boundary of an extracted subgraph), its consumers still read the unrounded float32
    value, while a model cut at that tensor reads the rounded one; so do the outputs of a
    model before and after a tap. That is onnxruntime's doing, not an edit's.
    """
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    if a.dtype != b.dtype or a.shape != b.shape or a.dtype.name not in LOW_PRECISION:
        return False
    x, y = a.astype(np.float32), b.astype(np.float32)
    return bool(np.allclose(x, y, rtol=1e-2, atol=1e-2, equal_nan=True))


def uses_low_precision(proto: onnx.ModelProto) -> bool:
    """True when any value of the model is declared float16 or bfloat16, or a node casts
    to one of them (the intermediates of expanded functions are often undeclared)."""
    low = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    g = proto.graph
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.tensor_type.elem_type in low:
            return True
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.i in low:
                return True
    return False


def value_diffs(expected: dict, got: dict, names, compare) -> tuple[list[str], bool]:
    """Differences between ``expected`` and ``got`` over ``names``, and whether every one
    of them is float16 rounding (see :func:`rounding_only`)."""
    diffs, rounding = [], True
    for k in names:
        if k not in got:
            diffs.append(f"`{k}` is not produced")
            rounding = False
        elif d := compare(expected[k], got[k]):
            diffs.append(f"`{k}`: {d}")
            rounding = rounding and rounding_only(expected[k], got[k])
    return diffs, bool(diffs) and rounding


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# ---------------------------------------------------------------------- one case
class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout(f"the case took more than {CASE_TIMEOUT} s")


def check_case(case, workdir: Path) -> CaseResult:
    """Run every step on one case; never raises."""
    from surgeon.errors import SurgeonError

    result = CaseResult(case.name)
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix=case.name[:40] + "-", dir=workdir))
    try:
        _check(case, folder, result)
    except CaseTimeout as e:
        result.failures.append(Failure(case.name, "case", str(e)))
    except SurgeonError as e:  # a step let a user error escape: still a finding
        result.failures.append(Failure(case.name, "case", "uncaught " + first_line(e)))
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        result.failures.append(
            Failure(case.name, "case", f"crash {first_line(e)} at {tb.filename}:{tb.lineno}")
        )
    finally:
        for p in sorted(folder.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        folder.rmdir()
    result.seconds = time.perf_counter() - start
    for step in STEPS:
        if step not in result.steps and result.runnable:
            result.steps[step] = "fail"
    return result


def _crash(result, step, e) -> None:
    """Record an exception raised by surgeon during ``step``."""
    from surgeon.errors import SurgeonError

    if isinstance(e, SurgeonError):
        reason = "refused: " + str(e).replace("\n", " ")[:400]
    else:
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f for f in reversed(tb) if "/surgeon/" in f.filename), tb[-1])
        reason = f"crash {first_line(e)} at {Path(where.filename).name}:{where.lineno}"
    result.failures.append(Failure(result.name, step, reason))
    result.steps[step] = "fail"


FP16_NOTE = "float16 rounding moved by onnxruntime's CPU float16 fallback (see rounding_only)"


def _check(case, folder: Path, result: CaseResult) -> None:
    import surgeon
    from surgeon.cli import COMMANDS
    from surgeon.edits.tap import tap

    feeds = stored_feeds(case)
    if feeds is None:
        result.skip = "stored inputs do not match the graph inputs"
        return
    original = folder / "model.onnx"
    onnx.save(case.model, str(original))
    try:
        expected = ort_run(original, feeds)
        again = ort_run(original, feeds)
    except Exception as e:
        result.skip = "onnxruntime: " + first_line(e)
        return
    result.runnable = True
    result.deterministic = all(same_bits(expected[k], again[k]) is None for k in expected)
    compare = same_bits if result.deterministic else same_structure
    low_precision = uses_low_precision(case.model)

    # 1. load, then save, through surgeon.
    try:
        model = surgeon.load(original)
        saved = surgeon.save(model, folder / "saved.onnx")
    except Exception as e:
        _crash(result, "load_save", e)
        return  # nothing else can run without a loaded model
    try:
        got = ort_run(saved, feeds)
    except Exception as e:
        result.failures.append(
            Failure(case.name, "load_save", "the saved model does not run: " + first_line(e))
        )
    else:
        diffs, _ = value_diffs(expected, got, list(expected), compare)
        if set(got) != set(expected):
            diffs.append(f"outputs {sorted(got)} instead of {sorted(expected)}")
        result.failures += [Failure(case.name, "load_save", d) for d in diffs]
    result.steps["load_save"] = "fail" if _failed(result, "load_save") else "pass"

    # 2. tap all: surgeon's verification on the stored inputs, then a plain run.
    values: dict = {}
    try:
        edited = tap(model, ["all"], feeds=feeds)
    except Exception as e:
        _crash(result, "tap", e)
    else:
        failures = []
        try:
            tapped = surgeon.save(edited.model, folder / "tapped.onnx")
            values = ort_run(tapped, feeds)
        except Exception as e:
            failures.append(
                Failure(case.name, "tap", "the tapped model does not run: " + first_line(e))
            )
        else:
            diffs, rounding = value_diffs(expected, values, list(expected), compare)
            why = f" ({FP16_NOTE})" if rounding and low_precision else ""
            failures += [
                Failure(case.name, "tap", "original output " + d + why, not why) for d in diffs
            ]
            absent = [t for t in edited.details["taps"] if t not in values]
            if absent:
                failures.append(
                    Failure(case.name, "tap", "taps not produced: " + ", ".join(absent[:5]))
                )
        if result.deterministic and not edited.passed:
            # surgeon's own verdict must agree with the plain run: a failure there that
            # the plain run explains is onnxruntime's; one it does not explain is surgeon's.
            explained = failures and all(not f.surgeon for f in failures)
            failures.append(
                Failure(
                    case.name,
                    "tap",
                    "surgeon's verification failed: "
                    + edited.report.summary()
                    + (f" ({FP16_NOTE})" if explained else ""),
                    not explained,
                )
            )
        result.failures += failures
        result.steps["tap"] = "fail" if _failed(result, "tap") else "pass"

    # 3. debug: the NaN/Inf verdict against one worked out here from a plain run.
    _check_debug(case, model, feeds, result, low_precision)

    # 4. extract each node's first output, cut where its inputs depend on graph inputs.
    if "extract" not in COMMANDS:
        result.steps["extract"] = "n/a"
        return
    from surgeon.compare import EXACT
    from surgeon.edits.extract import extract
    from surgeon.graph_facts import subgraph_reads
    from surgeon.runner import RunOptions

    dynamic = dynamic_tensors(model.proto.graph)
    tried = 0
    for i, node in enumerate(model.proto.graph.node):
        if not node.output or not node.output[0]:
            continue
        target = node.output[0]
        # Tensors computed from constants only stay inside the cut: a user cuts at
        # activations, and onnxruntime needs constant shapes/axes (Scan, Unsqueeze) to
        # type some subgraphs.
        cut = [x for x in dict.fromkeys([*node.input, *subgraph_reads(node)]) if x in dynamic]
        if not cut:
            continue
        tried += 1
        label = f"node #{i} {node.op_type} -> `{target}`"
        try:
            sub = extract(
                model,
                cut,
                [target],
                feeds=feeds,
                tolerance=EXACT,
                options=RunOptions(optimization="disabled"),
            )
        except Exception as e:
            _crash(result, "extract", e)
            result.failures[-1].reason = f"{label}: {result.failures[-1].reason}"
            continue
        failures = []
        if result.deterministic:
            # The same check as surgeon's, made here: the original with the cut points
            # exposed (a plain proto edit), and the subgraph fed with its values there.
            try:
                values_here = ort_run(with_outputs(case.model, [*cut, target]), feeds)
                values_here.update(feeds)
                path = surgeon.save(sub.model, folder / f"sub{i}.onnx")
                got = ort_run(path, {x: values_here.get(x) for x in sub.model.input_names})
            except Exception as e:
                failures.append(
                    Failure(
                        case.name,
                        "extract",
                        f"{label}: the extracted model does not run: {first_line(e)}",
                    )
                )
            else:
                diffs, rounding = value_diffs(values_here, got, [target], same_bits)
                why = f" ({FP16_NOTE})" if rounding and low_precision else ""
                failures += [
                    Failure(case.name, "extract", f"{label}: {d}{why}", not why) for d in diffs
                ]
        if result.deterministic and not sub.passed:
            explained = failures and all(not f.surgeon for f in failures)
            failures.append(
                Failure(
                    case.name,
                    "extract",
                    f"{label}: surgeon's verification failed: "
                    + sub.report.summary()
                    + (f" ({FP16_NOTE})" if explained else ""),
                    not explained,
                )
            )
        result.failures += failures
    result.extracts = tried
    if not tried:
        result.steps["extract"] = "n/a"
    else:
        result.steps["extract"] = "fail" if _failed(result, "extract") else "pass"


def _nonfinite(value) -> bool | None:
    """True when a value holds NaN/Inf, False when not, None when it cannot be told."""
    if value is None:
        return False
    if isinstance(value, list):
        flags = [_nonfinite(v) for v in value]
        return None if None in flags else any(flags)
    if isinstance(value, dict):
        return _nonfinite(list(value.values()))
    value = np.asarray(value)
    if value.dtype.kind in "biuOUS":
        return False
    try:
        return not bool(np.isfinite(value.astype(np.float64)).all())
    except (TypeError, ValueError):
        return None


def _has_nan(value) -> bool:
    """True when a value holds a NaN (None, integers and strings never do)."""
    if value is None:
        return False
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return _has_nan(list(value.values()))
    value = np.asarray(value)
    if value.dtype.kind in "biuOUS":
        return False
    try:
        return bool(np.isnan(value.astype(np.float64)).any())
    except (TypeError, ValueError):
        return False


def _nan_reaches_output(g: onnx.GraphProto, start: str, known: dict) -> bool:
    """True when NaN-holding tensors lead from ``start`` to a graph output holding NaN."""
    from surgeon.graph_facts import subgraph_reads

    carrying = {start}
    for node in g.node:
        if any(x in carrying for x in [*node.input, *subgraph_reads(node)]):
            carrying |= {o for o in node.output if o and _has_nan(known.get(o))}
    return any(o.name in carrying and _has_nan(known.get(o.name)) for o in g.output)


def expected_births(proto: onnx.ModelProto, values: dict) -> list[str]:
    """Main-graph tensors whose NaN/Inf are born at their producer, worked out from a
    plain run's values: the producer is not computed from constants only (initializers,
    Constant, ConstantOfShape and what only they feed), and every tensor it reads is
    finite. Written here independently of surgeon's ``blame_nonfinite``."""
    from onnx import numpy_helper

    from surgeon.graph_facts import subgraph_reads

    g = proto.graph
    known = dict(values)
    for t in g.initializer:
        known.setdefault(t.name, numpy_helper.to_array(t))
    inits = {t.name for t in g.initializer}
    feeds = {v.name for v in g.input if v.name not in inits}
    constant = set(inits)
    born = []
    for node in g.node:
        reads = [x for x in [*node.input, *subgraph_reads(node)] if x]
        outs = [o for o in node.output if o]
        if node.op_type in ("Constant", "ConstantOfShape") or (
            reads and all(x in constant for x in reads) and not node.op_type.startswith("Random")
        ):
            constant.update(outs)
            continue
        if not any(_nonfinite(known.get(o)) for o in outs if o in known):
            continue
        # A NaN from inputs that hold Inf but no NaN (0 * -inf) is born here too when a
        # chain of NaN-holding tensors carries it to a graph output.
        if all(x in known and not _has_nan(known[x]) for x in reads if x not in feeds) and all(
            not _has_nan(known.get(x)) for x in reads if x in feeds
        ):
            nan_born = [o for o in outs if o in known and _has_nan(known[o])]
            if nan_born:
                born += [o for o in nan_born if _nan_reaches_output(g, o, known)]
                continue
        if all(
            x in known and _nonfinite(known[x]) is False for x in reads if x not in feeds
        ) and all(_nonfinite(known.get(x)) is False for x in reads if x in feeds):
            born += [o for o in outs if o in known and _nonfinite(known[o])]
    return born


def _check_debug(case, model, feeds: dict, result: CaseResult, low_precision: bool) -> None:
    """Step 3: surgeon's debug verdict on the stored inputs."""
    from surgeon.debugging import DebugOptions, debug

    try:
        report = debug(model, DebugOptions(), feeds=feeds)
    except Exception as e:
        _crash(result, "debug", e)
        return
    if report.tap_check is not None and not report.tap_check.passed:
        # onnxruntime's float16 rounding moves with the taps (see rounding_only); the
        # tap step judges that on its own, so here it is listed only.
        result.failures.append(
            Failure(
                case.name,
                "debug",
                "tap check failed: "
                + report.tap_check.summary()
                + (f" ({FP16_NOTE})" if low_precision else ""),
                not low_precision,
            )
        )
    if result.deterministic:
        names = [o for n in case.model.graph.node for o in n.output if o]
        try:
            values = ort_run(with_outputs(case.model, names), feeds)
        except Exception as e:  # onnxruntime cannot expose them all: no independent verdict
            result.failures.append(
                Failure(
                    case.name,
                    "debug",
                    "plain run with every tensor exposed: " + first_line(e),
                    False,
                )
            )
        else:
            values.update(feeds)
            expected = expected_births(case.model, values)
            got = [x.tensor for x in report.born]
            if bool(expected) != bool(got):
                result.failures.append(
                    Failure(
                        case.name,
                        "debug",
                        f"NaN/Inf verdict: surgeon blames {got[:3] or 'nothing'}, the plain run "
                        f"{expected[:3] or 'nothing'} ({report.verdict()[:200]})",
                    )
                )
    result.debug_failed = bool(report.born)
    result.steps["debug"] = "fail" if _failed(result, "debug") else "pass"


def _failed(result: CaseResult, step: str) -> bool:
    """True when ``step`` has a failure attributed to surgeon (onnxruntime's own
    behaviour is listed, but does not fail the step)."""
    return any(f.step == step and f.surgeon for f in result.failures)


# ---------------------------------------------------------------------- running many
_CASES: list = []
_WORKDIR: Path | None = None


def _worker(index: int) -> CaseResult:
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT)
    try:
        return check_case(_CASES[index], _WORKDIR)
    finally:
        signal.alarm(0)


def run_cases(cases: list, workers: int = 2, progress=None) -> list[CaseResult]:
    """Check ``cases``, in ``workers`` forked processes (1: in this process)."""
    global _CASES, _WORKDIR
    with tempfile.TemporaryDirectory(prefix="surgeon-corpus-") as tmp:
        _CASES, _WORKDIR = cases, Path(tmp)
        results: list[CaseResult] = []
        if workers <= 1:
            for i in range(len(cases)):
                results.append(check_case(cases[i], _WORKDIR))
                if progress:
                    progress(results[-1])
        else:
            # fork: the workers inherit the cases built in memory (4 s to build).
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, maxtasksperchild=200) as pool:
                for r in pool.imap_unordered(_worker, range(len(cases)), chunksize=4):
                    results.append(r)
                    if progress:
                        progress(r)
        results.sort(key=lambda r: r.name)
        return results


def summarise(results: list[CaseResult]) -> dict:
    """Counts over ``results``: tried, runnable, and per step: passed (no failure
    attributed to surgeon; ``onnxruntime_only`` of them show onnxruntime's own float16
    behaviour), failed, n/a."""
    runnable = [r for r in results if r.runnable]
    counts = {
        "tried": len(results),
        "runnable": len(runnable),
        "nondeterministic": sum(1 for r in runnable if not r.deterministic),
        "extractions": sum(r.extracts for r in results),
        "steps": {},
    }
    for step in STEPS:
        c = Counter(r.steps.get(step, "fail") for r in runnable)
        # Passed, but with differences onnxruntime itself causes (listed as "not surgeon").
        ort = sum(
            1
            for r in runnable
            if r.steps.get(step) == "pass"
            and any(f.step == step and not f.surgeon for f in r.failures)
        )
        counts["steps"][step] = {
            "pass": c["pass"],
            "fail": c["fail"],
            "n/a": c["n/a"],
            "onnxruntime_only": ort,
        }
    # Cases where `surgeon debug` would exit 1 on a model onnx ships as healthy: each one
    # must be a NaN/Inf the plain run also sees born from finite inputs.
    counts["debug_exit_1"] = sum(1 for r in runnable if r.debug_failed)
    failures = [f for r in results for f in r.failures]
    counts["failures"] = len(failures)
    counts["surgeon_failures"] = sum(1 for f in failures if f.surgeon)
    counts["cases_with_failures"] = sum(1 for r in results if r.failures)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", "--limit", type=int, help="check a seeded random subset")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--match", help="only cases whose name matches this glob")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    parser.add_argument("--skipped", action="store_true", help="list why cases were not runnable")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    cases = select_cases(load_cases(), match=args.match, sample=args.sample, seed=args.seed)
    built = time.perf_counter() - t0
    import onnxruntime

    print(
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}: "
        f"{len(cases)} node test case(s) (built in {built:.1f} s), {args.workers} worker(s)"
    )

    done = [0]

    def progress(r: CaseResult) -> None:
        done[0] += 1
        if args.verbose:
            state = " ".join(f"{s}={r.steps.get(s, '-')}" for s in STEPS) if r.runnable else r.skip
            print(f"  [{done[0]}/{len(cases)}] {r.name}: {state} ({r.seconds:.2f} s)", flush=True)
        elif done[0] % 100 == 0:
            print(f"  {done[0]}/{len(cases)} ...", file=sys.stderr, flush=True)

    t1 = time.perf_counter()
    results = run_cases(cases, args.workers, progress)
    elapsed = time.perf_counter() - t1
    counts = summarise(results)

    print(f"\ncases tried:               {counts['tried']}")
    print(
        f"runnable by onnxruntime:   {counts['runnable']}"
        f"  ({counts['nondeterministic']} nondeterministic: compared by dtype and shape)"
    )
    for step in STEPS:
        s = counts["steps"][step]
        print(
            f"  {step:<10} passed {s['pass']:>5} (of which {s['onnxruntime_only']} with "
            f"onnxruntime-only differences)   failed {s['fail']:>4}   n/a {s['n/a']:>4}"
        )
    print(f"extractions checked:       {counts['extractions']}")
    print(
        f"debug finds a NaN/Inf born: {counts['debug_exit_1']} case(s) "
        "(from finite inputs, as the plain run confirms: e.g. a division by zero)"
    )
    print(
        f"failures:                  {counts['failures']} "
        f"({counts['surgeon_failures']} attributed to surgeon)"
    )
    print(f"time:                      {elapsed:.1f} s")
    failures = [f for r in results for f in r.failures]
    if failures:
        print("\nfailures:")
        for f in failures:
            print("  " + f.line())
    if args.skipped:
        reasons = Counter(r.skip.split(":", 2)[-1].strip()[:90] for r in results if not r.runnable)
        print("\nnot runnable by onnxruntime:")
        for reason, n in reasons.most_common():
            print(f"  {n:>4}  {reason}")
    return 1 if counts["surgeon_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
