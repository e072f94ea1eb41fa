"""surgeon's kernel library has two builds of its loops on x86-64 glibc: the baseline
(SSE2) loops and AVX2 clones picked at load time. A machine runs only one of them, so
here the library is built again from its source with the clones left out
(-DSURGEON_NO_VECTOR_CLONES) and both builds must give the same numbers, bit for bit,
on hostile tensors: sizes at the vector, block and span edges, NaN/Inf, zeros and ties,
values far from zero, mismatched sizes, every dtype pair and thread count."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import surgeon
from surgeon import fastops

SOURCE = Path(surgeon.__file__).resolve().parent / "_fastops.c"
FLOAT, HALF, DOUBLE, BF16 = (
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.DOUBLE,
    TensorProto.BFLOAT16,
)
NUMPY = {FLOAT: np.float32, HALF: np.float16, DOUBLE: np.float64}

pytestmark = pytest.mark.skipif(
    not fastops.available(), reason="surgeon's kernel library is not built here"
)


def _compiler() -> list[str] | None:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return cc if cc and shutil.which(cc[0]) else None


@pytest.fixture(scope="module")
def baseline_library(tmp_path_factory) -> str:
    """The library built from its source without the AVX2 clones, with the flags of
    pyproject.toml."""
    cc = _compiler()
    if cc is None:
        if os.environ.get("SURGEON_REQUIRE_FASTOPS") == "1":
            pytest.fail("no C compiler, but SURGEON_REQUIRE_FASTOPS=1")
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("fastops") / "baseline.so"
    flags = ["-shared", "-fPIC", "-O3", "-ffp-contract=off", "-pthread"]
    subprocess.run(
        [*cc, *flags, "-DSURGEON_NO_VECTOR_CLONES", str(SOURCE), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return str(out)


def _model(op: str, a_type: int, e_type: int, severity: int, threads: int) -> bytes:
    """One kernel node; a bfloat16 input is made by a Cast from float32 (numpy has no
    bfloat16 onnxruntime takes as a feed)."""
    nodes, feed_types = [], {"a": a_type} if op == fastops.STATS else {"a": a_type, "e": e_type}
    for name, elem in list(feed_types.items()):
        if elem == BF16:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_bf16"], to=BF16))
            feed_types[name] = FLOAT
    args = ["a_bf16" if a_type == BF16 else "a"]
    if op != fastops.STATS:
        args += ["e_bf16" if e_type == BF16 else "e", "tol"]
    outs = {
        fastops.STATS: ["numbers", "shape"],
        fastops.COMPARE: ["numbers", "shape", "reference_shape"],
        fastops.MEASURE: ["numbers", "shape", "reference_shape", "stats"],
    }[op]
    nodes.append(
        helper.make_node(op, args, outs, domain=fastops.DOMAIN, severity=severity, threads=threads)
    )
    inputs = [helper.make_tensor_value_info("a", feed_types["a"], None)]
    if op != fastops.STATS:
        inputs.append(helper.make_tensor_value_info("e", feed_types["e"], None))
        inputs.append(helper.make_tensor_value_info("tol", DOUBLE, [2]))
    outputs = [
        helper.make_tensor_value_info(
            o, DOUBLE if o in ("numbers", "stats") else TensorProto.INT64, None
        )
        for o in outs
    ]
    graph = helper.make_graph(nodes, "paths", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(fastops.DOMAIN, 1)],
    )
    model.ir_version = 8
    return model.SerializeToString()


def _values(rng, n: int, kind: str) -> np.ndarray:
    scale = 10.0 ** rng.integers(-20, 20)
    base = rng.standard_normal(n) * scale
    if kind == "ties":
        base = np.round(base / scale * 2.0)  # many equal values and zeros
    elif kind == "zeros":
        base = np.zeros(n)
    elif kind == "nonfinite" and n:
        base[rng.integers(n, size=3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
    elif kind == "far":
        base = np.abs(base) / scale + 1e10  # far from zero: the std's cross term
    return base


# sizes at the edges of the 4-wide vectors, 8 lanes, 128-element blocks and 2**16 spans
SIZES = (0, 1, 3, 4, 7, 8, 9, 127, 128, 129, 1000, 65535, 65536, 65537, 131075, 200003)
KINDS = ("normal", "ties", "zeros", "nonfinite", "far", "equal")
PAIRS = ((FLOAT, FLOAT), (HALF, HALF), (HALF, FLOAT), (FLOAT, HALF), (BF16, FLOAT))
STATS_TYPES = (FLOAT, HALF, DOUBLE, BF16)


def _case(rng, op: str):
    if op == fastops.STATS:
        a_type = e_type = STATS_TYPES[rng.integers(len(STATS_TYPES))]
    else:
        a_type, e_type = PAIRS[rng.integers(len(PAIRS))]
    n = int(SIZES[rng.integers(len(SIZES))])
    kind = KINDS[rng.integers(len(KINDS))]
    a = _values(rng, n, kind)
    m = n if rng.random() > 0.1 else max(0, n - 1)  # sometimes sizes differ
    noise = 1 + rng.standard_normal(m) * 10.0 ** rng.integers(-8, 0)
    e = a[:m] if kind == "equal" else a[:m] * noise
    with np.errstate(over="ignore"):
        feeds = {"a": a.astype(NUMPY.get(a_type, np.float32))}
        if op != fastops.STATS:
            feeds["e"] = e.astype(NUMPY.get(e_type, np.float32))
            atol, rtol = 10.0 ** rng.integers(-9, 0, size=2)
            feeds["tol"] = np.array([atol, rtol] if rng.random() > 0.1 else [0.0, 0.0])
    key = (op, a_type, e_type, int(rng.integers(2)), int(rng.integers(1, 4)))
    return key, feeds


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal bit for bit, but for a NaN's sign and payload (not a number; the scalar
    general pass is the same code in both builds, but a compiler may order its NaN
    operands differently)."""
    if got.dtype != np.float64:
        return np.array_equal(got, want)
    nan = np.isnan(got)
    return np.array_equal(nan, np.isnan(want)) and np.array_equal(
        got[~nan].view(np.int64), want[~nan].view(np.int64)
    )


@pytest.mark.parametrize("op", [fastops.STATS, fastops.COMPARE, fastops.MEASURE])
def test_the_avx2_clones_and_the_baseline_loops_agree_bit_for_bit(op, baseline_library):
    sessions: dict = {}

    def session(library: str, key):
        if (library, key) not in sessions:
            options = ort.SessionOptions()
            options.register_custom_ops_library(library)
            sessions[library, key] = ort.InferenceSession(
                _model(*key), options, providers=["CPUExecutionProvider"]
            )
        return sessions[library, key]

    rng = np.random.default_rng({"TensorStats": 1, "ComparePair": 2, "MeasurePair": 3}[op])
    for _ in range(60):
        key, feeds = _case(rng, op)
        installed = session(fastops.library(), key).run(None, feeds)
        baseline = session(baseline_library, key).run(None, feeds)
        for got, want in zip(installed, baseline, strict=True):
            assert _same(got, want), (
                key,
                {k: v.shape for k, v in feeds.items()},
            )
        # real numbers, not a pair of all-NaN arrays that agree whatever the loops do
        assert not feeds["a"].size or not np.isnan(installed[0]).all()
