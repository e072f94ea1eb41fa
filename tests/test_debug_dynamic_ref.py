"""debug --ref on models whose declared shapes are dynamic: the comparison plans with the
shapes shape inference gives at the feeds (or the tapped run measured), so the cheap
comparison nodes are used, and a plan the run contradicts (a reference tensor of another
shape) still ends in a shape mismatch reported as such, never a crash or wrong numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, write

from surgeon.statistics.in_graph import static_types_at_feeds, with_shapes


def compress_model(threshold: float, rows: str = "N") -> onnx.ModelProto:
    """Rows of x whose first column exceeds ``threshold``: a shape no inference knows
    (with ``rows`` static too, as after a detector's NMS)."""
    return parse(
        f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[{rows}, 3] x) => (float[M, 3] y) {{
            limit = Constant<value = float {{{threshold}}}>()
            first = Constant<value = int64 {{0}}>()
            column = Gather<axis = 1>(x, first)
            keep = Greater(column, limit)
            rows = Compress<axis = 0>(x, keep)
            y = Relu(rows)
        }}
        """
    )


@pytest.mark.parametrize(
    "first_column",
    [
        [1.0, -1, -1, -1, -1, -1, -1, -1],  # one row against eight: broadcasts
        [1.0, 2, -1, -1, -1, -1, -1, -1],  # two rows against eight: cannot broadcast
    ],
)
def test_reference_tensor_of_another_run_shape_is_a_shape_mismatch(tmp_path, cli, first_column):
    candidate = write(compress_model(0.0), tmp_path / "candidate.onnx")
    reference = write(compress_model(-100.0), tmp_path / "reference.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    x[:, 0] = first_column
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=x)
    res = cli("debug", candidate, "--ref", reference, "--feeds", feeds, "--json")
    assert res.status == 1, res.stderr
    by_name = {c["name"]: c for c in res.json["comparison"]}
    kept = int((x[:, 0] > 0).sum())
    for name in ("rows", "y"):
        assert by_name[name]["status"] == "shape"
        assert by_name[name]["shape"] == [kept, 3]
        assert by_name[name]["reference_shape"] == [8, 3]
    assert by_name["column"]["status"] == "ok"


def test_dynamic_model_numbers_equal_numpy(tmp_path, cli):
    """A dynamic-shape model against a perturbed copy: the numbers of each compared
    tensor are numpy's on the two models' values (run separately by onnxruntime)."""
    import onnxruntime as ort

    text = """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[N, C, H, W] x) => (float[N, C, H, W] y) {
            w = Constant<value = float[1, 1, 1, 1] {SCALE}>()
            h = Mul(x, w)
            y = Tanh(h)
        }
        """
    candidate = write(parse(text.replace("SCALE", "1.001")), tmp_path / "c.onnx")
    reference = write(parse(text.replace("SCALE", "1.0")), tmp_path / "r.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 7)).astype(np.float32)
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=x)
    res = cli("debug", candidate, "--ref", reference, "--feeds", feeds, "--json")
    assert res.status == 1, res.stderr

    def values(path):
        model = onnx.load(str(path))
        del model.graph.output[:]
        model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in ("h", "y")])
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return dict(zip(("h", "y"), s.run(None, {"x": x}), strict=True))

    got, want = values(candidate), values(reference)
    by_name = {c["name"]: c for c in res.json["comparison"]}
    for name in ("h", "y"):
        a, b = got[name].astype(np.float64), want[name].astype(np.float64)
        assert by_name[name]["max_abs"] == float(np.abs(a - b).max())
        assert by_name[name]["shape"] == [2, 3, 5, 7]


def test_static_types_at_feeds_and_run_shapes_fill_only_open_dims():
    from surgeon.model import Model

    model = Model(
        parse(
            """
            <ir_version: 8, opset_import: ["" : 13]>
            g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }
            """
        )
    )
    declared = onnx.helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [-1, 3])
    types = {"y": declared}
    refined = static_types_at_feeds(model, {"x": np.zeros((4, 3), np.float32)}, types)
    assert [d.dim_value for d in refined["y"].tensor_type.shape.dim] == [4, 3]
    # a measured shape that contradicts a known dim, or the rank, is not taken
    assert with_shapes(types, {"y": [4, 2]})["y"] is declared
    assert with_shapes(types, {"y": [4, 3, 1]})["y"] is declared
    assert [d.dim_value for d in with_shapes(types, {"y": [5, 3]})["y"].tensor_type.shape.dim] == [
        5,
        3,
    ]
