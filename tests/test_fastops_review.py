"""Review of surgeon's kernel library (surgeon/_fastops.c, surgeon.fastops) and of debug
--ref's folded run: adversarial checks against independent references (numpy, a plain
onnxruntime run, the ONNX-node path with SURGEON_FASTOPS=0, values mode).

Four tests reproduce bugs the review found, fixed since (each docstring says what was
wrong and where: "Fixed after review"). Every other test documents something checked
that holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import weakref
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from conftest import run_cli, write
from onnx import TensorProto, helper
from test_compare_in_graph import _expected, _same
from test_debug_folded import _spy
from test_debug_in_graph import _normalise
from test_fastops import _compare, _model
from test_ref_speed_isolated import _excess_and_born
from test_statistics import agree, check, onnx_nodes_only

import surgeon.debugging.orchestration as orchestration
import surgeon.runner as runner
from surgeon import fastops
from surgeon.compare import Tolerance
from surgeon.compare.in_graph import (
    diff_from_outputs,
    severity_from_outputs,
)
from surgeon.debugging import DebugOptions, debug
from surgeon.loading import load
from surgeon.model import Model
from surgeon.runner import RunOptions, run
from surgeon.statistics.in_graph import _stats_from_numbers

pytestmark = pytest.mark.skipif(
    not fastops.available(), reason="surgeon's kernel library is not built here"
)

ROOT = Path(__file__).resolve().parent.parent
_ELEM = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.bool_): TensorProto.BOOL,
}


# ---------------------------------------------------------------- helpers


def _node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, domain=fastops.DOMAIN, **attrs)


def _stats_raw(x: np.ndarray, **attrs):
    elem = _ELEM.get(x.dtype, TensorProto.STRING if x.dtype.kind in "OUS" else None)
    model = _model(
        [_node(fastops.STATS, ["x"], ["s", "shape"], **attrs)],
        [helper.make_tensor_value_info("x", elem, None)],
        ["s", "shape"],
    )
    got = run(model, {"x": x}, options=RunOptions())
    return got["s"], got["shape"]


def _stats(x: np.ndarray, **attrs):
    s, shape = _stats_raw(x, **attrs)
    return _stats_from_numbers("x", "n", "Identity", 0, s.tolist(), shape, x.dtype.name)


def _pair_raw(a, b, tol, op=fastops.COMPARE, **attrs):
    outs = ["c", "sa", "sb"] + (["ms"] if op == fastops.MEASURE else [])
    model = _model(
        [_node(op, ["a", "b", "tol"], outs, **attrs)],
        [
            helper.make_tensor_value_info("a", _ELEM[a.dtype], None),
            helper.make_tensor_value_info("b", _ELEM[b.dtype], None),
        ],
        outs,
        [onnx.numpy_helper.from_array(np.asarray(tol), "tol")],
    )
    return run(model, {"a": a, "b": b}, options=RunOptions())


def _debug_paths(tmp_path: Path, cand, ref, feeds: dict, **kw):
    """debug --ref three ways: folded (kernels), the ONNX-node path, values mode; and
    whether the first one folded."""
    cand_path = write(cand, tmp_path / "cand.onnx")
    ref_path = write(ref, tmp_path / "ref.onnx")
    np.savez(tmp_path / "feeds.npz", **feeds)
    options = DebugOptions(reference=str(ref_path), tolerance=Tolerance(1e-4, 1e-4), **kw)
    options = dataclasses.replace(
        options,
        feed_options=dataclasses.replace(options.feed_options, npz=str(tmp_path / "feeds.npz")),
    )
    return _three(cand_path, options)


def _three(cand_path, options):
    folded_calls: list[bool] = []
    original = orchestration._debug_folded

    def spying(*args, **kwargs):
        result = original(*args, **kwargs)
        folded_calls.append(result is not None)
        return result

    orchestration._debug_folded = spying
    try:
        folded = debug(load(cand_path), options)
    finally:
        orchestration._debug_folded = original
    with onnx_nodes_only():
        usual = debug(load(cand_path), options)
    values = debug(load(cand_path), dataclasses.replace(options, keep_values=True))
    return folded, usual, values, folded_calls


def _assert_three_agree(folded, usual, values, folded_calls):
    assert folded_calls == [True]
    assert folded.mode == usual.mode == "statistics" and values.mode == "values"
    assert _normalise(folded.to_dict()) == _normalise(usual.to_dict())
    f = _normalise(folded.to_dict())
    v = _normalise(dataclasses.replace(values, mode="statistics").to_dict())
    f.pop("tap_check", None)
    v.pop("tap_check", None)
    assert f == v
    by_name = {s.name: s for s in folded.stats}
    for name, value in values.values.items():
        check(by_name[name], value)


# ---------------------------------------------------------------- the C API by slot
# The OrtApi positions of API version 13, counted in onnxruntime's
# include/onnxruntime/core/session/onnxruntime_c_api.h (ORT_API_VERSION 13): CreateStatus
# 0, GetErrorCode 1, GetErrorMessage 2, CreateEnv 3 ... SetInterOpNumThreads 25,
# CreateCustomOpDomain 26, CustomOpDomain_Add 27, AddCustomOpDomain 28,
# RegisterCustomOpsLibrary 29, ... CreateTensorWithDataAsOrtValue 49, IsTensor 50,
# GetTensorMutableData 51, ... SetDimensions 59, GetTensorElementType 60,
# GetDimensionsCount 61, GetDimensions 62, GetSymbolicDimensions 63,
# GetTensorShapeElementCount 64, GetTensorTypeAndShape 65, ... KernelInfoGetAttribute_float
# 85, KernelInfoGetAttribute_int64 86, KernelInfoGetAttribute_string 87,
# KernelContext_GetInputCount 88, KernelContext_GetOutputCount 89, KernelContext_GetInput
# 90, KernelContext_GetOutput 91, ReleaseEnv 92, ReleaseStatus 93, ReleaseMemoryInfo 94,
# ReleaseSession 95, ReleaseValue 96, ReleaseRunOptions 97, ReleaseTypeInfo 98,
# ReleaseTensorTypeAndShapeInfo 99.
_HEADER_V13 = {
    "CreateStatus": 0,
    "CreateCustomOpDomain": 26,
    "CustomOpDomain_Add": 27,
    "AddCustomOpDomain": 28,
    "GetTensorMutableData": 51,
    "GetTensorElementType": 60,
    "GetDimensionsCount": 61,
    "GetDimensions": 62,
    "GetTensorShapeElementCount": 64,
    "GetTensorTypeAndShape": 65,
    "KernelInfoGetAttribute_int64": 86,
    "KernelContext_GetInput": 90,
    "KernelContext_GetOutput": 91,
    "ReleaseStatus": 93,
    "ReleaseTensorTypeAndShapeInfo": 99,
}


def test_api_slots_are_those_of_the_version_13_header():
    source = (ROOT / "surgeon" / "_fastops.c").read_text()
    slots = {m[0]: int(m[1]) for m in re.findall(r"API_(\w+) = (\d+),", source)}
    assert slots == _HEADER_V13
    assert "enum { API_VERSION = 13 };" in source
    # OrtCustomOp of version 13 ends with GetInputMemoryType (no variadic fields yet)
    struct = source[source.index("typedef struct OrtCustomOp {") :]
    struct = struct[: struct.index("} OrtCustomOp;")]
    fields = re.findall(r"\(\*(\w+)\)", struct)
    assert fields == [
        "CreateKernel",
        "GetName",
        "GetExecutionProviderType",
        "GetInputType",
        "GetInputTypeCount",
        "GetOutputType",
        "GetOutputTypeCount",
        "KernelCompute",
        "KernelDestroy",
        "GetInputCharacteristic",
        "GetOutputCharacteristic",
        "GetInputMemoryType",
    ]


def test_a_missing_attribute_takes_the_status_release_path_without_harm():
    # Every node without ``threads`` makes KernelInfoGetAttribute_int64 (86) fail and the
    # kernel release the status (93): a wrong slot there would crash here.
    for _ in range(3):
        s, shape = _stats_raw(np.arange(10, dtype=np.float32))
        assert s.tolist() == [0.0, 9.0, 4.5, 82.5, 1.0, 0.0, 0.0] and shape.tolist() == [10]


# ---------------------------------------------------------------- hostile kernel inputs
def test_tensor_stats_of_tensors_it_does_not_read_are_nan_not_a_crash():
    for x in (
        np.arange(10, dtype=np.int64),
        np.array([True, False]),
        np.array(["a", "bc"], dtype=object),
    ):
        s, shape = _stats_raw(x)
        assert np.isnan(s).all() and shape.tolist() == list(x.shape)


def test_tensor_stats_of_empty_and_scalar_tensors():
    s = _stats(np.zeros((0, 3), np.float32))
    assert s.size == 0 and s.shape == [0, 3] and s.mean is None
    x = np.array(-2.5, np.float32)
    s = _stats(x)
    assert s.shape == [] and s.size == 1
    check(s, x)


@pytest.mark.parametrize("threads", [-5, 0, 1, 3, 8, 9, 10**9, -(2**63), 2**63 - 1])
def test_out_of_range_threads_give_the_same_numbers(threads):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(3 * 2**16 + 5) * 7 - 2).astype(np.float32)
    base = _stats_raw(x)[0]
    assert _stats_raw(x, threads=threads)[0].tobytes() == base.tobytes()


def test_severity_attribute_is_a_flag():
    rng = np.random.default_rng(2)
    b = rng.standard_normal(1000).astype(np.float32)
    a = (b * np.float32(1.001)).astype(np.float32)
    tol = np.array([1e-4, 1e-4])
    one = _pair_raw(a, b, tol, severity=1)["c"]
    for flag in (7, -1, 2**40):
        assert _pair_raw(a, b, tol, severity=flag)["c"].tobytes() == one.tobytes()
    off = _pair_raw(a, b, tol, severity=0)["c"]
    assert math.isnan(off[12]) and off[:12].tobytes() == one[:12].tobytes()


@pytest.mark.parametrize("tol", [np.array([1e-3]), np.array([1e-3, 1e-3, 1.0]), np.array(1e-3)])
def test_a_tolerance_of_the_wrong_length_gives_nan_numbers(tol):
    x = np.arange(6, dtype=np.float32)
    got = _pair_raw(x, x, tol, op=fastops.MEASURE)
    assert np.isnan(got["c"]).all() and np.isnan(got["ms"]).all()
    assert got["sa"].tolist() == got["sb"].tolist() == [6]


def test_a_float32_tolerance_is_refused_by_onnxruntime_not_read():
    from surgeon.errors import SurgeonError

    x = np.arange(6, dtype=np.float32)
    with pytest.raises(SurgeonError):
        _pair_raw(x, x, np.array([1e-3, 1e-3], np.float32))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_every_float16_and_bfloat16_bit_pattern_measures_as_numpy():
    """Subnormals, -0.0, every NaN payload (both signs), Inf, the extremes."""
    every = np.arange(2**16, dtype=np.uint16)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = every.view(dtype)
        wide = x.astype(np.float64)
        check(_stats(x), x)
        finite = x[np.isfinite(wide)]
        check(_stats(finite), finite)  # the fast (finite) pass over several spans
        small = finite[np.abs(finite.astype(np.float64)) < 1e-3]
        check(_stats(small), small)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_float16_nan_payloads_and_signed_zeros_in_pairs():
    t = Tolerance(1e-3, 1e-3)
    bits = np.array([0x7E01, 0xFC01, 0x7C01, 0xFE00, 0x0001, 0x8001, 0x8000, 0x0000], np.uint16)
    a = bits.view(np.float16)
    b = bits[::-1].copy().view(np.float16)
    for x, y in ((a, b), (a, a.copy()), (a.astype(np.float32), b), (a, b.astype(np.float32))):
        out, got = _compare(x, y, t)
        _same(diff_from_outputs(out, got, t, name="t", reference="t"), _expected(x, y, t))


def test_pairs_across_spans_with_nan_inf_and_other_sizes_equal_compare_arrays():
    rng = np.random.default_rng(42)
    kinds = [
        (np.float32, np.float32),
        (np.float16, np.float16),
        (np.float16, np.float32),
        (np.float32, np.float16),
    ]
    for it in range(16):
        dtypes = kinds[it % 4]
        n = int(rng.choice([1, 129, 2**16 - 1, 2**16, 2**16 + 1, 2 * 2**16 + 77]))
        m = n if it % 3 else max(0, n + int(rng.integers(-3, 4)))
        b = (rng.standard_normal(m) * 10.0 ** rng.integers(-3, 4)).astype(dtypes[1])
        a = (np.resize(b.astype(np.float64), n) * (1 + rng.standard_normal(n) * 1e-4)).astype(
            dtypes[0]
        )
        for x in (a, b):
            if x.size and rng.random() < 0.6:
                k = rng.integers(0, x.size, size=3)
                x[k] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0], size=3)
        t = Tolerance(float(10.0 ** rng.integers(-6, -1)), float(10.0 ** rng.integers(-6, -1)))
        out, got = _compare(a, b, t, severity=a.size == b.size)
        _same(diff_from_outputs(out, got, t, name="t", reference="t"), _expected(a, b, t))
        if a.size == b.size:
            assert severity_from_outputs(out, got) == _excess_and_born(a, b, t)


def test_two_sessions_running_at_once_in_threads_give_the_same_bytes():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4 * 2**16 + 3) * 5).astype(np.float32)
    y = (x + rng.standard_normal(x.size).astype(np.float32) * 1e-3).astype(np.float32)
    outs = ["c", "sa", "sb", "ms", "s", "sh"]
    model = _model(
        [
            _node(fastops.MEASURE, ["a", "b", "tol"], ["c", "sa", "sb", "ms"]),
            _node(fastops.STATS, ["a"], ["s", "sh"]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")],
        outs,
        [onnx.numpy_helper.from_array(np.array([1e-4, 1e-4]), "tol")],
    )
    sessions = [runner.Session(model, options=RunOptions()) for _ in range(2)]
    base = sessions[0].run({"a": x, "b": y}, outs)
    assert base["ms"].tobytes() == base["s"].tobytes()
    errors: list = []

    def work(session):
        for _ in range(6):
            got = session.run({"a": x, "b": y}, outs)
            errors.extend(n for n in outs if got[n].tobytes() != base[n].tobytes())

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- float16 models
def test_float16_model_statistics_are_numpys_on_the_values_the_model_holds():
    """A float16 chain (onnxruntime runs it in float32 and drops Cast pairs, through
    Identity/Reshape too): the kernel's statistics equal numpy on values mode's arrays and
    the ONNX-node path's, at debug's default optimisation (disabled)."""
    half = TensorProto.FLOAT16
    nodes = [
        helper.make_node("Sub", ["a", "b"], ["d"], name="sub"),
        helper.make_node("Identity", ["d"], ["i"], name="id"),
        helper.make_node("Mul", ["i", "i"], ["sq"], name="mul"),
        helper.make_node("Reshape", ["sq", "s"], ["r"], name="rs"),
        helper.make_node("Exp", ["r"], ["e"], name="exp"),
        helper.make_node("Add", ["e", "a"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "half",
        [helper.make_tensor_value_info(n, half, [4, 16]) for n in "ab"],
        [helper.make_tensor_value_info("y", half, [4, 16])],
        [onnx.numpy_helper.from_array(np.array([4, 16], np.int64), "s")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((4, 16)).astype(np.float16) for n in "ab"}
    lean = debug(Model(proto), DebugOptions(), feeds=feeds)
    full = debug(Model(proto), DebugOptions(keep_values=True), feeds=feeds)
    with onnx_nodes_only():
        nodes_path = debug(Model(proto), DebugOptions(), feeds=feeds)
    assert lean.tap_check.passed and full.tap_check.passed
    for s, v, n in zip(lean.stats, full.stats, nodes_path.stats, strict=True):
        assert agree(s, v) and agree(s, n), s.name
        check(s, full.values[s.name])


# ---------------------------------------------------------------- the folded --ref run
def _branchy(scale: float) -> onnx.ModelProto:
    """One tensor feeding several consumers; float64, int32, uint8 and bool tensors; a
    dynamic batch."""
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["m"], ["s"], name="sig"),
        helper.make_node("Add", ["r", "s"], ["a"], name="add"),
        helper.make_node("Cast", ["a"], ["d"], name="cast64", to=TensorProto.DOUBLE),
        helper.make_node("Sqrt", ["d"], ["q"], name="sqrt"),
        helper.make_node("Cast", ["q"], ["y"], name="back", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["m"], ["i32"], name="casti", to=TensorProto.INT32),
        helper.make_node("Greater", ["m", "w"], ["b"], name="gt"),
        helper.make_node("Cast", ["m"], ["u8"], name="castu", to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("i32", TensorProto.INT32, None),
            helper.make_tensor_value_info("b", TensorProto.BOOL, None),
            helper.make_tensor_value_info("u8", TensorProto.UINT8, None),
            helper.make_tensor_value_info("q", TensorProto.DOUBLE, None),
        ],
        [onnx.numpy_helper.from_array(np.full((5,), scale, np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("scale", [1.0, 1.01])
def test_folded_with_several_consumers_integer_and_double_tensors(tmp_path, scale):
    x = (np.random.default_rng(0).standard_normal((7, 5)) * 4).astype(np.float32)
    _assert_three_agree(*_debug_paths(tmp_path, _branchy(scale), _branchy(1.0), {"x": x}))


def _renamed(scale: float, names=("m", "r", "y")) -> onnx.ModelProto:
    m, r, y = names
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], [m], name="mul"),
            helper.make_node("Relu", [m], [r], name="relu"),
            helper.make_node("Tanh", [r], [y], name="tanh"),
        ],
        "renamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.full((5,), scale, np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_folded_with_a_name_map(tmp_path):
    x = (np.random.default_rng(1).standard_normal((3, 5)) * 4).astype(np.float32)
    paths = _debug_paths(
        tmp_path,
        _renamed(1.01, ("M", "R", "Y")),
        _renamed(1.0),
        {"x": x},
        name_map={"m": "M", "r": "R", "y": "Y"},
    )
    _assert_three_agree(*paths)


def test_folded_with_external_weights(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    def model(scale):
        w = (np.random.default_rng(1).standard_normal((64, 64)) * scale).astype(np.float32)
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                helper.make_node("Relu", ["m"], ["r"], name="relu"),
                helper.make_node("Add", ["r", "m"], ["y"], name="add"),
            ],
            "ext",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [onnx.numpy_helper.from_array(w, "w")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    cand, ref = model(1.001), model(1.0)
    convert_model_to_external_data(cand, location="c.bin", size_threshold=0)
    convert_model_to_external_data(ref, location="r.bin", size_threshold=0)
    onnx.save(cand, str(tmp_path / "cand.onnx"))
    onnx.save(ref, str(tmp_path / "ref.onnx"))
    np.savez(
        tmp_path / "feeds.npz",
        x=np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32),
    )
    options = DebugOptions(reference=str(tmp_path / "ref.onnx"), tolerance=Tolerance(1e-4, 1e-4))
    options = dataclasses.replace(
        options,
        feed_options=dataclasses.replace(options.feed_options, npz=str(tmp_path / "feeds.npz")),
    )
    _assert_three_agree(*_three(tmp_path / "cand.onnx", options))


def test_folded_cli_json_and_save_equal_the_onnx_node_path(tmp_path, monkeypatch):
    x = (np.random.default_rng(0).standard_normal((7, 5)) * 4).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", x=x)
    cand = write(_renamed(1.01), tmp_path / "cand.onnx")
    ref = write(_renamed(1.0), tmp_path / "ref.onnx")
    got = {}
    for env in ("1", "0"):
        monkeypatch.setenv("SURGEON_FASTOPS", env)
        save = tmp_path / f"save{env}.npz"
        out = run_cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz", "--json",
                      "--save", save)  # fmt: skip
        assert out.status == 1, out.stderr
        doc = _normalise(out.json)
        doc.pop("written", None)
        got[env] = (doc, dict(np.load(save)))
    assert got["1"][0] == got["0"][0]
    assert got["1"][1].keys() == got["0"][1].keys()
    assert all(np.array_equal(got["1"][1][k], got["0"][1][k]) for k in got["1"][1])


def test_folded_cli_with_shape_and_random_feeds_equals_the_onnx_node_path(tmp_path, monkeypatch):
    cand = write(_branchy(1.01), tmp_path / "cand.onnx")
    ref = write(_branchy(1.0), tmp_path / "ref.onnx")
    got = {}
    for env in ("1", "0"):
        monkeypatch.setenv("SURGEON_FASTOPS", env)
        for shape in ("x:9x5", "N=2"):
            out = run_cli("debug", cand, "--ref", ref, "--shape", shape, "--json", "--seed", "3")
            assert out.status == 1, out.stderr
            got[env, shape] = _normalise(out.json)
    for shape in ("x:9x5", "N=2"):
        assert got["1", shape] == got["0", shape]


def test_folded_with_duplicated_intermediate_and_initializer_outputs(tmp_path):
    def model(scale):
        graph = helper.make_graph(
            [
                helper.make_node("Mul", ["x", "w"], ["m"], name="mul"),
                helper.make_node("Relu", ["m"], ["y"], name="relu"),
            ],
            "outs",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
                helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5]),
                helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 5]),
                helper.make_tensor_value_info("w", TensorProto.FLOAT, [5]),
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5]),
            ],
            [onnx.numpy_helper.from_array(np.full((5,), scale, np.float32), "w")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    x = (np.random.default_rng(0).standard_normal((3, 5)) * 4).astype(np.float32)
    folded, usual, values, calls = _debug_paths(tmp_path, model(1.01), model(1.0), {"x": x})
    _assert_three_agree(folded, usual, values, calls)
    assert folded.tap_check.passed


def test_a_reference_that_fails_gives_the_same_error_with_and_without_kernels(
    tmp_path, monkeypatch
):
    good = _renamed(1.0)
    bad = _renamed(1.0)
    bad.graph.node[2].op_type = "Reshape"
    bad.graph.node[2].input.append("bs")
    bad.graph.initializer.append(onnx.numpy_helper.from_array(np.array([7, 7], np.int64), "bs"))
    cand = write(good, tmp_path / "cand.onnx")
    ref = write(bad, tmp_path / "ref.onnx")
    np.savez(tmp_path / "feeds.npz", x=np.ones((7, 5), np.float32))
    got = {}
    for env in ("1", "0"):
        monkeypatch.setenv("SURGEON_FASTOPS", env)
        got[env] = run_cli("debug", cand, "--ref", ref, "--feeds", tmp_path / "feeds.npz")
    assert got["1"].status == got["0"].status == 2
    assert got["1"].stderr == got["0"].stderr and "Traceback" not in got["1"].stderr


# ================================================================ bugs found
def test_rank_above_64_is_measured_whole():
    """Fixed after review (was: surgeon/_fastops.c read_input, ``int64_t dims[64]`` and ``rank > 64`` -> bad):
    a tensor of rank 65 or more is not read at all, and TensorStats reports it as shape
    [] (a scalar: size 1 to the Python side) with min=+inf, max=-inf, mean NaN and no
    NaN counted; ComparePair/MeasurePair report an empty pair that matches (finite=0,
    mismatches=0). onnxruntime runs such tensors (a Reshape to 67 dims here). Through
    ``surgeon debug`` the tap's statistics read shape [], min inf, max -inf. Fix: read the
    dims into a buffer of GetDimensionsCount's size (malloc), or at least fill the count
    and data (only the shape output needs the dims)."""
    shape = np.array([2] + [1] * 66, np.int64)
    tol = np.array([1e-3, 1e-3])
    model = _model(
        [
            helper.make_node("Reshape", ["x", "s"], ["r"]),
            _node(fastops.STATS, ["r"], ["st", "sh"]),
            _node(fastops.COMPARE, ["r", "x", "tol"], ["c", "ca", "cb"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        ["st", "sh", "c", "ca"],
        [onnx.numpy_helper.from_array(shape, "s"), onnx.numpy_helper.from_array(tol, "tol")],
    )
    x = np.array([3.0, -4.0], np.float32)
    got = run(model, {"x": x}, options=RunOptions())
    assert got["sh"].tolist() == shape.tolist()  # fails: []
    assert got["st"].tolist() == [-4.0, 3.0, -0.5, 24.5, 0.0, 0.0, 0.0]  # fails: inf, -inf, nan...
    assert got["ca"].tolist() == shape.tolist()
    assert got["c"][5] == 2  # finite pairs: fails, 0


def test_float64_std_keeps_numpys_accuracy():
    """Fixed after review (was: surgeon/_fastops.c DEFINE_STATS / stats_end): the one-read variance drops the
    cross term 2 * (m_b - mean) * sum_b(v - m_b). That term is zero only when the block
    mean m_b is exact, which holds for float32/float16/bfloat16 blocks (their sums of 128
    are exact in float64) but not for float64 tensors: with 1e10 + U(0, 1) the kernel's
    std is off by ~1e-7 relative where numpy's two-pass std (and the ONNX-node path it
    replaced) are within ~1e-10. Fix: also sum ``centered`` per block (lin_b, in the same
    loop as the squares) and add 2 * d * lin_b to each block's ``between`` term in
    stats_end (d = m_b - mean); verified on a scratch build: then equal to numpy's to
    1e-12 relative."""
    rng = np.random.default_rng(0)
    x = 1e10 + rng.random((64, 64))
    d = x - 1e10  # exact
    true = float(np.sqrt(np.mean((d - d.mean()) ** 2)))
    assert abs(float(x.std()) - true) <= 1e-9 * true  # numpy
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")],
        "f64",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [64, 64])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with onnx_nodes_only():
        nodes_std = debug(Model(proto), DebugOptions(), feeds={"x": x}).stats[0].std
    assert abs(nodes_std - true) <= 1e-9 * true  # the ONNX-node path holds
    kernel_std = debug(Model(proto), DebugOptions(), feeds={"x": x}).stats[0].std
    assert abs(kernel_std - true) <= 1e-9 * true  # fails: ~1e-7 relative


def test_folded_ref_with_large_weights_holds_one_session_at_a_time(tmp_path, monkeypatch):
    """Fixed after review (was: surgeon/debugging/orchestration.py _debug_folded with ``started`` None, and
    in_graph_compare._Merge.run calling ``fold.before_run()`` after ``Session(merged)``):
    above ALONGSIDE_WEIGHTS (256 MiB) or for a scratch-file (>2 GB) model the plain run
    is meant to go "in turn" because "both sessions would hold [the weights] for that
    moment" (_start_plain_run's docstring). In the folded --ref path it is made in
    before_run, i.e. after the merged session (the candidate's and the reference's
    weights) is built and while it is alive: a second session with the candidate's
    weights is built and run beside it. The ONNX-node path (SURGEON_FASTOPS=0) never has
    two sessions alive. Fix: when ``started`` is None, run the plain model before the
    merged session is built (e.g. call plain_values() at the top of _debug_folded, or
    before compare_layers), and let before_run only wait for a started thread."""
    monkeypatch.setattr(orchestration, "ALONGSIDE_WEIGHTS", -1)  # as for a large model
    x = (np.random.default_rng(0).standard_normal((3, 5)) * 4).astype(np.float32)
    cand = write(_renamed(1.01), tmp_path / "cand.onnx")
    ref = write(_renamed(1.0), tmp_path / "ref.onnx")
    np.savez(tmp_path / "feeds.npz", x=x)
    options = DebugOptions(reference=str(ref), tolerance=Tolerance(1e-4, 1e-4))
    options = dataclasses.replace(
        options,
        feed_options=dataclasses.replace(options.feed_options, npz=str(tmp_path / "feeds.npz")),
    )
    live = [0]
    most = {}
    original_init = runner.Session.__init__

    def counting_init(self, model, *args, **kwargs):
        original_init(self, model, *args, **kwargs)
        live[0] += 1
        most[path] = max(most.get(path, 0), live[0])
        weakref.finalize(self, lambda: live.__setitem__(0, live[0] - 1))

    folded_calls = _spy(monkeypatch)
    monkeypatch.setattr(runner.Session, "__init__", counting_init)
    for path in ("nodes", "folded"):
        monkeypatch.setenv("SURGEON_FASTOPS", "0" if path == "nodes" else "1")
        report = debug(load(cand), options)
        assert report.tap_check.passed
    assert folded_calls == [True]  # (the nodes path does not try to fold)
    assert most["nodes"] == 1
    assert most["folded"] == 1  # fails: 2 (plain session built beside the merged one)


def test_own_library_as_custom_op_library_is_registered_once(tmp_path):
    """Fixed after review (was: surgeon/runner.py Session.__init__): the kernel library is registered for every
    model importing ai.surgeon, after the user's --custom-op-library libraries, without
    checking that it is not among them. Given surgeon's own library (e.g. to run a model
    that uses its ops), ``debug --ref`` fails with exit 2 "onnxruntime could not load
    cand.onnx: Domain already set in registry" (blaming the user's model), and plain
    ``debug`` silently drops to values mode with a note; SURGEON_FASTOPS=0 works. Fix:
    skip the automatic registration when a user library is the same file
    (os.path.samefile) - or register it once per session options."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="n")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = write(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        tmp_path / "cand.onnx",
    )
    library = fastops.library()
    with onnx_nodes_only():
        assert run_cli("debug", model, "--ref", model, "--custom-op-library", library).status == 0
    result = run_cli("debug", model, "--ref", model, "--custom-op-library", library)
    assert result.status == 0, result.stderr  # fails: 2, "Domain already set in registry"


@pytest.mark.parametrize("nodes", [False, True], ids=["kernels", "onnx-nodes"])
def test_debug_of_a_rank_67_tensor_exits_0_with_numpys_statistics(tmp_path, monkeypatch, nodes):
    """A tensor of rank 67 (beyond numpy's 64 dims): debug measured it, then stopped with
    an internal error (exit 3) making a stand-in array for the declared-shape check, on
    both paths (found while fixing the review's rank bug; already so at 7a76f89)."""
    if nodes:
        monkeypatch.setenv("SURGEON_FASTOPS", "0")
    shape = [2] + [1] * 66
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
            helper.make_node("Reshape", ["r", "back"], ["y"], name="back"),
        ],
        "rank67",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [
            onnx.numpy_helper.from_array(np.array(shape, np.int64), "s"),
            onnx.numpy_helper.from_array(np.array([2], np.int64), "back"),
        ],
    )
    path = tmp_path / "rank67.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.array([-0.5, 1.25], np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    result = run_cli("debug", path, "--feeds", tmp_path / "x.npz", "--json")
    assert result.status == 0, result.stderr
    taps = {t["name"]: t for t in json.loads(result.stdout)["taps"]}
    assert len(taps["r"]["shape"]) == 67
    assert (taps["r"]["min"], taps["r"]["max"], taps["r"]["mean"]) == (-0.5, 1.25, 0.375)
