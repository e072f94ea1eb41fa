"""`surgeon debug --ref` judged by each node's own (isolated) error: a planted float16
overflow and a badly quantized weight are named in every node order, a healthy float16
model passes (its tap check within the printed float16 tolerance), and nodes whose inputs
have no reference value say so."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import write
from test_precision_float16 import float_model, random_orders, to_float16
from test_precision_qdq import float_model as qdq_float_model
from test_precision_qdq import quantize


def _fp16_pair(tmp_path, scale: float, order: onnx.ModelProto | None = None):
    reference = float_model(scale)
    candidate = order if order is not None else to_float16(reference)
    return write(candidate, tmp_path / "m16.onnx"), write(reference, tmp_path / "m32.onnx")


@pytest.mark.parametrize("index", range(3))
def test_planted_overflow_is_named_in_every_topological_order(cli, tmp_path, index):
    order = random_orders(to_float16(float_model(1e4)), 3, seed=11)[index]
    m16, m32 = _fp16_pair(tmp_path, 1e4, order)
    res = cli("debug", m16, "--ref", m32, "--atol", "1e-2", "--rtol", "1e-2", "--json")
    assert res.status == 1, res.stdout
    assert res.json["isolated_verdict"] == "found"
    assert res.json["root_cause"]["node"] == "square"
    assert res.json["root_cause"]["isolated"]["tier"] == "non-finite"
    assert res.json["ranking"][0]["node"] == "square" and res.json["ranking"][0]["rank"] == 1
    # cumulative beside isolated for every compared tensor whose node was run alone
    sq = next(c for c in res.json["comparison"] if c["name"] == "sq")
    assert sq["isolated"]["tier"] == "non-finite" and sq["inf"] > 0
    # the converter's Casts pair the float32 input and output with their float16 sides
    counts = res.json["pairing"]["counts"]
    assert counts["cast"] >= 1 and counts["name"] >= 10


def test_healthy_float16_model_passes_with_the_tap_tolerance_printed(cli, tmp_path):
    m16, m32 = _fp16_pair(tmp_path, 1.0)
    res = cli("debug", m16)
    assert res.status == 0, res.stdout
    text = " ".join(res.stdout.split())
    assert "float16 model: the tap check allows atol=0.00781, rtol=0.00781" in text
    res = cli("debug", m16, "--ref", m32, "--atol", "1e-2", "--rtol", "1e-2", "--json")
    assert res.status == 0, res.json["verdict"]
    assert res.json["isolated_verdict"] in ("clean", "accumulated")
    assert res.json["root_cause"] is None
    assert res.json["tap_check"]["tolerance"]["atol"] == 2.0**-7
    text = " ".join(
        cli("debug", m16, "--ref", m32, "--atol", "1e-2", "--rtol", "1e-2").stdout.split()
    )
    assert "paired" in text and "through Casts" in text and "own error" in text


def test_float32_model_tap_check_stays_bit_exact(cli, tmp_path):
    res = cli("debug", write(float_model(1.0), tmp_path / "m32.onnx"), "--json")
    assert res.status == 0 and res.json["tap_check"]["tolerance"]["exact"] is True
    assert not any("float16 model" in n for n in res.json["notes"])


def test_qdq_models_badly_quantized_weight_is_named(cli, tmp_path):
    reference = qdq_float_model(200.0)
    int8 = write(quantize(reference, tmp_path), tmp_path / "int8.onnx")
    f32 = write(reference, tmp_path / "ref.onnx")
    res = cli("debug", int8, "--ref", f32, "--atol", "5e-2", "--rtol", "5e-2", "--json")
    assert res.status == 1, res.json["verdict"]
    assert res.json["root_cause"]["node"] == "w2_DequantizeLinear"
    assert res.json["pairing"]["counts"]["qdq"] > 0
    assert "all its inputs match" not in res.json["verdict"]


def test_nodes_with_unpaired_inputs_say_so(cli, tmp_path):
    # y = Sigmoid(c), c = Abs(x): saved activations hold x and y only. Every node whose
    # inputs have no reference value is listed with the reason, never "inputs match".
    model = write(
        onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] x) => (y) {
    a = Abs (x)
    b = Neg (a)
    c = Exp (b)
    d = Neg (c)
    e = Exp (d)
    f = Neg (e)
    g = Exp (f)
    h = Neg (g)
    i = Exp (h)
    y = Sigmoid (i)
}"""),
        tmp_path / "m.onnx",
    )
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "acts.npz", x=x, y=np.zeros((2, 4), np.float32))
    res = cli("debug", model, "--ref", tmp_path / "acts.npz", "--json")
    assert res.status == 1
    unpaired = {u["node"]: u for u in res.json["unpaired"]}
    assert unpaired["Sigmoid->y"]["status"] == "skipped"
    assert "no reference value" in unpaired["Sigmoid->y"]["reason"]
    assert "all its inputs match" not in res.json["verdict"]


def _scaled_chain(tmp_path, name: str, a: float, b: float):
    from conftest import parse

    proto = parse(f"""<ir_version: 8, opset_import: ["" : 17]>
agraph (float[4, 8] x) => (y) <float a = {{{a}}}, float b = {{{b}}}> {{
  [scale] s = Mul(x, a)
  [shrink] y = Mul(s, b)
}}""")
    return write(proto, tmp_path / name)


@pytest.mark.parametrize(("b", "status"), [(1e-6, 0), (1.0, 1)])
def test_a_node_beyond_tolerance_fails_only_when_the_outputs_show_it(cli, tmp_path, b, status):
    """`scale` is 1% off on its own. When `shrink` makes that invisible at the output
    (b = 1e-6: the outputs are compared and within tolerance), the run passes and names
    `scale` as where the model comes closest to failing; when the output shows it
    (b = 1), `scale` is the root cause and the run fails."""
    ref = _scaled_chain(tmp_path, "ref.onnx", 2.0, b)
    cand = _scaled_chain(tmp_path, "cand.onnx", 2.02, b)
    res = cli("debug", cand, "--ref", ref, "--json")
    assert res.status == status, res.stdout
    doc = res.json
    assert doc["isolated_verdict"] == "found"
    assert (doc["ranking"][0]["node"], doc["ranking"][0]["tier"]) == ("scale", "beyond")
    if status == 0:
        assert doc["verdict"].startswith("outputs within tolerance (`y` compared)")
        assert "scale" in doc["verdict"]
    else:
        assert doc["verdict"].startswith("root cause: `scale`")
