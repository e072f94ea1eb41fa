"""Tap statistics: both modes of ``debug`` (statistics nodes in the graph, and numpy over
fetched values) against an independent numpy float64 reference, over dtypes and hostile
values; narrow dtypes (float8, int4, bfloat16, strings) tap; ZipMap / sequence models tap.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from conftest import parse, write
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from surgeon.debugging import DebugOptions, debug
from surgeon.edits.tap import learn_types
from surgeon.loading import load
from surgeon.model import Model
from surgeon.statistics import build_stats_model

# ---------------------------------------------------------------- the reference
INTEGERS = {"bool", "int4", "uint4"} | {f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)}


def reference(value: np.ndarray) -> dict:
    """What the statistics must be, written from the definition with plain numpy (not
    surgeon's code)."""
    size = value.size
    name = value.dtype.name
    if size == 0:
        return {"size": 0, "min": None, "max": None, "mean": None, "std": None}
    with np.errstate(all="ignore"):
        v = value.astype(np.float64)
        if name in INTEGERS:
            wide = value.astype(np.int64) if value.dtype.kind == "V" else value
            lo, hi = int(wide.min()), int(wide.max())
        elif np.isnan(v).all():
            lo = hi = math.nan
        else:
            lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        finite = v[np.isfinite(v)]
        mean, std = float(np.mean(v)), float(np.std(v))
        if not np.isfinite(np.sum(np.abs(finite))):
            # Finite values whose sum overflows float64: the result depends on the order
            # of the additions (numpy's pairwise or onnxruntime's), not compared.
            mean = std = "any"
        elif np.isinf(v).any() and not np.isnan(v).any():
            mean = float(np.sum(v[np.isinf(v)]))  # +Inf, -Inf, or NaN for both signs
        return {
            "size": size,
            "nan": int(np.isnan(v).sum()),
            "inf": int(np.isinf(v).sum()),
            "zeros": float((v == 0).sum()) / size,
            "min": lo,
            "max": hi,
            "mean": mean,
            "std": std,
            "scale": float(np.max(np.abs(finite), initial=0.0)),
        }


def same(a, b, scale: float) -> bool:
    """Equal up to float64 rounding of sums taken in different orders."""
    if b == "any":
        return a is not None
    if a is None or b is None:
        return a is b
    if math.isnan(b) or math.isinf(b):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= 1e-12 * max(scale, 1e-300) + 1e-300


def check(stats, value: np.ndarray) -> None:
    ref = reference(value)
    where = f"{stats.name} ({stats.dtype}) {value!r}"
    assert stats.size == ref["size"], where
    assert list(stats.shape) == list(value.shape), where
    if not ref["size"]:
        assert stats.min is None and stats.mean is None and stats.std is None, where
        return
    assert (stats.nan, stats.inf) == (ref["nan"], ref["inf"]), where
    assert stats.zeros == ref["zeros"], where
    for key in ("min", "max"):  # exact, NaN only when everything is NaN
        got, want = getattr(stats, key), ref[key]
        assert type(got) is type(want), (key, where)
        assert got == want or (math.isnan(got) and math.isnan(want)), (key, got, want, where)
    scale = ref["scale"]
    assert same(stats.mean, ref["mean"], scale), ("mean", stats.mean, ref["mean"], where)
    assert same(stats.std, ref["std"], 2 * scale), ("std", stats.std, ref["std"], where)


# ---------------------------------------------------------------- hostile values
FLOATS = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
    "float64": np.float64,
}
INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]
DTYPES = [*FLOATS, *INTS]


def float_values(dtype) -> st.SearchStrategy:
    info = ml_dtypes.finfo(dtype)
    special = [
        math.nan,
        math.inf,
        -math.inf,
        0.0,
        -0.0,
        float(info.max),  # huge (1.8e308 for float64)
        -float(info.max),
        float(info.smallest_subnormal),  # denormal
        -8.764,
        1e300 if dtype is np.float64 else 1.0,
    ]
    return st.one_of(st.sampled_from(special), st.floats(-1e4, 1e4, width=32))


def arrays(dtype_name: str) -> st.SearchStrategy:
    if dtype_name in FLOATS:
        dtype = FLOATS[dtype_name]
        elements = float_values(dtype)
    elif dtype_name == "bool":
        dtype, elements = np.bool_, st.booleans()
    else:
        dtype = np.dtype(dtype_name)
        info = np.iinfo(dtype)
        # Extremes of the type (int64 near 2**63 is far beyond float64's 2**53) and
        # small numbers, often repeated.
        edges = [int(info.min), int(info.max), int(info.max) - 1, 0, 1]
        elements = st.one_of(
            st.sampled_from(edges), st.integers(int(info.min), int(info.max)), st.integers(-3, 3)
        ).map(lambda v, lo=int(info.min), hi=int(info.max): min(max(v, lo), hi))

    def build(items, shape_kind, constant):
        if constant and items:
            items = [items[0]] * len(items)
        with np.errstate(all="ignore"):
            a = np.array(items, dtype=np.float64 if dtype_name in FLOATS else object)
            a = a.astype(dtype)
        if shape_kind == "empty-2d":
            return np.zeros((2, 0), dtype)
        if shape_kind == "2d" and a.size % 2 == 0:
            return a.reshape(2, -1)
        return a

    return st.builds(
        build,
        st.lists(elements, min_size=0, max_size=9),
        st.sampled_from(["1d", "2d", "empty-2d"]),
        st.booleans(),
    )


def identity_chain(elem_types: dict[str, int], opset: int = 21) -> Model:
    """Each input ``x_i`` -> Identity -> ``a_i`` (intermediate) -> Identity -> ``y_i``."""
    nodes, inputs, outputs = [], [], []
    for i, (name, elem) in enumerate(elem_types.items()):
        nodes += [
            helper.make_node("Identity", [name], [f"a_{i}"], name=f"first_{i}"),
            helper.make_node("Identity", [f"a_{i}"], [f"y_{i}"], name=f"second_{i}"),
        ]
        inputs.append(helper.make_tensor_value_info(name, elem, None))
        outputs.append(helper.make_tensor_value_info(f"y_{i}", elem, None))
    graph = helper.make_graph(nodes, "chain", inputs, outputs)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    return Model(proto)


@contextlib.contextmanager
def onnx_nodes_only():
    """Statistics and comparisons measured with ONNX nodes (see surgeon.fastops)."""
    before = os.environ.get("SURGEON_FASTOPS")
    os.environ["SURGEON_FASTOPS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SURGEON_FASTOPS"]
        else:
            os.environ["SURGEON_FASTOPS"] = before


def agree(a, b) -> bool:
    """Two measurements of one tensor: counts, extremes and flags identical; mean and
    std equal to the last bits of the tensor's largest magnitude (the sums run in another
    order: [0, -max, -5268.7, max] has the float64 mean 0 in one order, -1317 in another)."""
    exact = ("name", "shape", "dtype", "size", "nan", "inf", "zeros", "min", "max", "flags")
    extremes = [abs(v) for v in (a.min, a.max) if v is not None and math.isfinite(v)]
    scale = max(extremes, default=0.0)

    def same_value(x, y):
        return x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))

    def close(x, y):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            return same_value(x, y)
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-300) or abs(x - y) <= 1e-12 * scale

    return all(same_value(getattr(a, k), getattr(b, k)) for k in exact) and all(
        close(getattr(a, k), getattr(b, k)) for k in ("mean", "std")
    )


def both_modes(model: Model, feeds: dict) -> tuple[dict, dict]:
    """tensor -> (statistics-mode stats, values-mode stats), and the values that values
    mode fetched; the tap check of each run must pass."""
    lean = debug(model, DebugOptions(), feeds=feeds)
    full = debug(model, DebugOptions(keep_values=True), feeds=feeds)
    assert lean.mode == "statistics" and full.mode == "values"
    assert lean.tap_check.passed and full.tap_check.passed
    # Statistics mode measures with surgeon's kernels where they are built, else with
    # ONNX nodes: both give the same statistics.
    with onnx_nodes_only():
        nodes = debug(model, DebugOptions(), feeds=feeds)
    assert nodes.tap_check.passed
    for a, b in zip(lean.stats, nodes.stats, strict=True):
        assert agree(a, b), (a, b)
    by_name = {s.name: s for s in full.stats}
    return {s.name: (s, by_name[s.name]) for s in lean.stats}, full.values


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(st.fixed_dictionaries({d: arrays(d) for d in DTYPES}))
def test_both_modes_equal_numpy_float64(values):
    # One model carries every dtype, so each example costs two debug runs.
    names = {f"x_{d}": v for d, v in values.items()}
    elems = {n: helper.np_dtype_to_tensor_dtype(v.dtype) for n, v in names.items()}
    found, _ = both_modes(identity_chain(elems), names)
    for i, value in enumerate(names.values()):
        for tensor in (f"a_{i}", f"y_{i}"):
            lean, full = found[tensor]
            assert lean.dtype == full.dtype == value.dtype.name
            check(lean, value)
            check(full, value)
            assert lean.flags == full.flags


# ---------------------------------------------------------------- the filed cases
def test_constant_tensor_has_zero_std_in_both_modes():
    # sum(x^2)/n - mean^2 in float32 reported std 0.075 for this tensor.
    x = np.full((4096,), -8.764, np.float32)
    found, _ = both_modes(identity_chain({"x": TensorProto.FLOAT}), {"x": x})
    for stats in found["a_0"]:
        assert stats.std == 0.0
        assert stats.mean == pytest.approx(float(np.float32(-8.764)), rel=1e-15)
        assert stats.flags == ["constant"]


def test_std_of_large_offset_data_matches_numpy():
    # YOLO-like activations: mean far from zero relative to the spread.
    rng = np.random.default_rng(0)
    x = (1000.0 + rng.standard_normal(100_000) * 0.01).astype(np.float32)
    found, _ = both_modes(identity_chain({"x": TensorProto.FLOAT}), {"x": x})
    want = float(np.std(x.astype(np.float64)))
    for stats in found["a_0"]:
        assert stats.std == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    ("offset", "spread"),
    [(0.0, 1.0), (2.0, 1.0), (0.5, 0.01), (7.5, 0.07), (-3.0, 0.8)],
)
def test_statistics_mode_equals_numpy_on_offset_data(offset, spread):
    # Data far from zero relative to its spread (Sigmoid outputs, a DFL expectation) and
    # near it: the centered form keeps numpy's numbers either way. Long enough that
    # onnxruntime's summation order differs from numpy's pairwise one.
    rng = np.random.default_rng(1)
    x = (offset + rng.standard_normal(300_000) * spread).astype(np.float32)
    model = identity_chain({"x": TensorProto.FLOAT})
    found, _ = both_modes(model, {"x": x})
    lean, full = found["a_0"]
    v = x.astype(np.float64)
    assert lean.mean == pytest.approx(float(np.mean(v)), rel=1e-13)
    assert lean.std == pytest.approx(float(np.std(v)), rel=1e-11)
    assert (lean.min, lean.max, lean.zeros, lean.flags) == (full.min, full.max, full.zeros, [])


def test_integer_tensor_statistics_equal_numpy():
    x = np.arange(-500, 1500, dtype=np.int64) * 3
    found, _ = both_modes(identity_chain({"x": TensorProto.INT64}), {"x": x})
    lean, _ = found["a_0"]
    assert (lean.min, lean.max) == (-1500, 4497)
    assert lean.mean == pytest.approx(float(np.mean(x)), rel=1e-15)
    assert lean.std == pytest.approx(float(np.std(x)), rel=1e-13)


def test_min_max_ignore_nan_in_both_modes():
    x = np.array([np.nan, 2.0, -3.0, np.nan], np.float32)
    found, _ = both_modes(identity_chain({"x": TensorProto.FLOAT}), {"x": x})
    for stats in found["a_0"]:
        assert (stats.min, stats.max, stats.nan) == (-3.0, 2.0, 2)
        assert math.isnan(stats.mean) and math.isnan(stats.std)


def test_huge_float64_is_not_inf_and_passes(cli, tmp_path):
    m = identity_chain({"x": TensorProto.DOUBLE}).proto
    path = write(m, tmp_path / "f64.onnx")
    np.savez(tmp_path / "in.npz", x=np.array([1e300, -1e300, 5.0]))
    res = cli("debug", path, "--feeds", tmp_path / "in.npz", "--json")
    assert res.status == 0, res.stdout
    tap = next(t for t in res.json["taps"] if t["name"] == "a_0")
    assert (tap["min"], tap["max"], tap["inf"]) == (-1e300, 1e300, 0)


def test_int64_beyond_float_precision_keeps_its_value(cli, tmp_path):
    big = 2**60 + 1
    x = np.array([big, big + 2, -big], np.int64)
    found, _ = both_modes(identity_chain({"x": TensorProto.INT64}), {"x": x})
    for stats in found["a_0"]:
        assert (stats.min, stats.max) == (-big, big + 2)
    path = write(identity_chain({"x": TensorProto.INT64}).proto, tmp_path / "i64.onnx")
    np.savez(tmp_path / "in.npz", x=x)
    res = cli("debug", path, "--feeds", tmp_path / "in.npz", "--json")
    tap = next(t for t in res.json["taps"] if t["name"] == "a_0")
    assert (tap["min"], tap["max"]) == (-big, big + 2)  # exact in JSON too


def test_statistics_mode_keeps_float_activations_inside():
    # The point of statistics mode: only scalars and shapes leave onnxruntime, so memory
    # stays that of a plain run; and few nodes per tensor.
    model = identity_chain({"x": TensorProto.FLOAT, "z": TensorProto.FLOAT16})
    taps = ["a_0", "a_1"]
    stats_model, outs = build_stats_model(model, taps, learn_types(model, taps))
    assert all(o.value is None for o in outs.values())
    added = stats_model.proto.graph.output[len(model.proto.graph.output) :]
    assert all(len(o.type.tensor_type.shape.dim) <= 1 for o in added)
    assert len(stats_model.proto.graph.node) - len(model.proto.graph.node) <= 2 * 12


# ---------------------------------------------------------------- narrow dtypes
def _round_trip(elem: int, opset: int) -> onnx.ModelProto:
    return parse(f"""<ir_version: 10, opset_import: ["" : {opset}]>
    agraph (float[2, 3] x) => (float[2, 3] y) {{
        q = Cast <to = {elem}> (x)
        y = Cast <to = 1> (q)
    }}""")


NARROW = [
    ("float8_e4m3fn", TensorProto.FLOAT8E4M3FN, 19),
    ("float8_e4m3fnuz", TensorProto.FLOAT8E4M3FNUZ, 19),
    ("float8_e5m2", TensorProto.FLOAT8E5M2, 19),
    ("float8_e5m2fnuz", TensorProto.FLOAT8E5M2FNUZ, 19),
    ("int4", TensorProto.INT4, 21),
    ("uint4", TensorProto.UINT4, 21),
    ("float16", TensorProto.FLOAT16, 17),
    ("bfloat16", TensorProto.BFLOAT16, 17),
    ("bool", TensorProto.BOOL, 17),
    ("uint64", TensorProto.UINT64, 17),
]
if hasattr(TensorProto, "FLOAT8E8M0"):
    NARROW.append(("float8_e8m0fnu", TensorProto.FLOAT8E8M0, 24))


@pytest.mark.parametrize(("dtype", "elem", "opset"), NARROW, ids=[n[0] for n in NARROW])
def test_narrow_dtypes_tap_in_both_modes(tmp_path, dtype, elem, opset):
    # float8 failed with "no implementation for Shape(19) node `surgeon_stats/1/shape`",
    # blaming the user's model for a node surgeon inserted.
    model = load(write(_round_trip(elem, opset), tmp_path / f"{dtype}.onnx"))
    x = np.array([[0.0, 1.5, -2.0], [3.0, 0.25, -0.5]], np.float32)
    found, values = both_modes(model, {"x": x})
    lean, full = found["q"]
    assert lean.dtype == full.dtype == dtype
    exact = ("min", "max", "zeros", "nan", "inf", "size", "shape")
    assert {f: getattr(lean, f) for f in exact} == {f: getattr(full, f) for f in exact}
    assert lean.mean == pytest.approx(full.mean, rel=1e-12)
    assert lean.std == pytest.approx(full.std, rel=1e-12)
    assert lean.shape == [2, 3] and full.size == 6
    q = values["q"]
    assert q.dtype.name == dtype
    check(lean, q)
    check(full, q)


def test_string_tensors_are_listed_alike_in_both_modes():
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2] x) => (float[2] y) {
        s = Cast <to = 8> (x)
        y = Cast <to = 1> (s)
    }""")
    found, _ = both_modes(Model(m), {"x": np.array([1.5, 2.0], np.float32)})
    lean, full = found["s"]
    for stats in (lean, full):
        assert (stats.dtype, stats.shape, stats.size, stats.min) == ("str", [2], 2, None)


# ---------------------------------------------------------------- ZipMap, sequences
IRIS = Path(__import__("onnxruntime").__file__).parent / "datasets" / "logreg_iris.onnx"


@pytest.mark.skipif(not IRIS.exists(), reason="onnxruntime ships no logreg_iris.onnx")
@pytest.mark.parametrize("extra", [[], ["--save", "taps.npz"]])
def test_zipmap_classifier_taps(cli, tmp_path, extra):
    # onnxruntime reports the unknown shape of ZipMap's input as [], which was written as
    # a scalar: the tapped model then failed to load.
    res = cli(
        "debug", IRIS, "--json", *[str(tmp_path / e) if e.endswith("npz") else e for e in extra]
    )
    assert res.status == 0, res.stdout
    taps = {t["name"]: t for t in res.json["taps"]}
    assert taps["probability_tensor_normalized"]["shape"] == [3, 3]
    assert taps["probabilities"]["dtype"] == "sequence"


def test_sequence_and_map_outputs_tap():
    # Normalizer has no ONNX shape inference, so its output type comes from onnxruntime.
    m = parse("""<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 1]>
    agraph (float[3, 4] x) => (probs, pair) {
        n = ai.onnx.ml.Normalizer <norm = "L1"> (x)
        probs = ai.onnx.ml.ZipMap <classlabels_int64s = [0, 1, 2, 3]> (n)
        pair = SequenceConstruct (n, x)
    }""")
    model = Model(m)
    types = learn_types(model, ["n"])
    assert not types["n"].tensor_type.HasField("shape")  # unknown, not a scalar
    x = np.abs(np.random.default_rng(0).standard_normal((3, 4))).astype(np.float32)
    found, _ = both_modes(model, {"x": x})
    lean, full = found["n"]
    assert lean.shape == full.shape == [3, 4]
    assert lean.mean == pytest.approx(full.mean, rel=1e-12)
    assert lean.mean == pytest.approx(0.25, rel=1e-6)  # each row sums to 1
    for tensor, kind in (("probs", "sequence"), ("pair", "sequence")):
        lean, full = found[tensor]
        assert lean.dtype == full.dtype == kind and lean.size == full.size


def test_failing_statistics_nodes_are_not_blamed_on_the_model(monkeypatch, onnx_nodes):
    # If onnxruntime rejects the NaN/Inf counting nodes surgeon inserts, the tensors are
    # fetched and measured with numpy instead of reporting the user's model as broken.
    import surgeon.statistics.in_graph as in_graph

    original = in_graph.build_stats_model
    broken_runs = []

    def broken(model, taps, types, *, counts=False):
        stats_model, outs = original(model, taps, types, counts=counts)
        if counts:
            broken_runs.append(taps)
            graph = stats_model.proto.graph
            graph.node.append(helper.make_node("NoSuchOp", ["x"], ["junk"], domain="surgeon.test"))
            graph.output.add(name="junk")
            stats_model.proto.opset_import.append(helper.make_opsetid("surgeon.test", 1))
        return stats_model, outs

    monkeypatch.setattr(in_graph, "build_stats_model", broken)
    x = np.array([np.nan, 1.0, np.inf], np.float32)
    report = debug(identity_chain({"x": TensorProto.FLOAT}), DebugOptions(), feeds={"x": x})
    stats = next(s for s in report.stats if s.name == "a_0")
    assert (stats.nan, stats.inf, stats.min, stats.max) == (1, 1, 1.0, math.inf)
    assert broken_runs and report.stats[-1].nan == 1


@pytest.mark.parametrize("optimization", ["disabled", "all"])
def test_float16_computed_in_float32_is_measured_as_stored(optimization):
    """onnxruntime's CPU runs a float16 Conv in float32 between casts it inserts; the
    statistics must be those of the float16 tensor, not of the float32 it came from.
    (bfloat16 has no Conv in ONNX and few CPU kernels; it gets the same Reshape.)"""
    elem, npdt = TensorProto.FLOAT16, np.float16
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(npdt), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", elem, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", elem, None)],
        [w],
    )
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(npdt)}
    lean = debug(model, DebugOptions(optimization=optimization), feeds=feeds)
    full = debug(model, DebugOptions(keep_values=True, optimization=optimization), feeds=feeds)
    for s in lean.stats:
        check(s, full.values[s.name])
        assert s.min == float(npdt(s.min)) and s.max == float(npdt(s.max)), s.name


def test_the_types_known_to_build_are_what_the_probe_says():
    # build_stats_model skips the probe session for float32 at these opsets: the probe
    # itself (a session on the statistics nodes alone) must agree.
    from surgeon.statistics.in_graph import _KNOWN_TO_BUILD, _onnxruntime_builds

    for elem, opsets in _KNOWN_TO_BUILD.items():
        for opset in opsets:
            for counts in (False, True):
                assert _onnxruntime_builds.__wrapped__(elem, opset, 8, counts), (opset, counts)
