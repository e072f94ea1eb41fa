"""debug --save in chunks (surgeon.debugging.saving): the file equals the one-run
values path's, bit for bit, whatever the chunk budget; the report says the run count."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import write
from onnx import helper, numpy_helper

from surgeon.debugging import DebugOptions, debug, save_values, saving
from surgeon.loading import load


def _chain(n: int = 6) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    nodes, inits, x = [], [], "x"
    for i in range(n):
        w = f"w{i}"
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), w))
        nodes.append(helper.make_node("MatMul", [x, w], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}"))
        x = f"t{i}"
    nodes.append(helper.make_node("ArgMax", [x], ["cls"], name="argmax", axis=1))
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8])],
        [
            helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, [4, 8]),
            helper.make_tensor_value_info("cls", onnx.TensorProto.INT64, [4]),
        ],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_chunks_equal_one_run(cli, tmp_path, monkeypatch):
    path = write(_chain(), tmp_path / "m.onnx")
    one_run = debug(load(path), DebugOptions(keep_values=True))
    save_values(one_run, tmp_path / "one.npz")
    for budget, runs in ((1 << 30, 1), (300, 6), (1, 13)):  # 128 bytes per float tensor
        monkeypatch.setattr(saving, "SAVE_CHUNK_BYTES", budget)
        res = cli("debug", path, "--save", tmp_path / "chunked.npz", "--json")
        assert res.status == 0, res.err
        assert any(f"in {runs} run(s)" in n for n in res.json["notes"]), res.json["notes"]
        a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "chunked.npz")
        assert list(a.keys()) == list(b.keys())
        for k in a.keys():
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_plan_chunks_keeps_graph_order(tmp_path):
    report = debug(load(write(_chain(2), tmp_path / "m.onnx")))
    chunks = saving.plan_chunks(report, budget=256)
    assert [t for c in chunks for t in c] == [s.name for s in report.stats]
    assert all(len(c) <= 2 for c in chunks)
