"""surgeon.baked: the one baked-constant analysis behind check-dynamic's suspects and the
PyTorch export check (which had two copies before; check-dynamic's did not follow a size
through shape plumbing, so `x.view(x.shape[0], 3, H*W)` went unnamed)."""

from __future__ import annotations

from conftest import parse

from surgeon.baked import Factor, export_products, find_baked_constants
from surgeon.dynamic import check_dynamic
from surgeon.model import Model
from surgeon.runner import RunOptions

# `x.view(x.shape[0], 3, H*W)` traced at H=W=4: the batch is taken from the input, but
# 16 = H*W is a constant that reaches the Reshape only through a Concat.
VIEW = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, H, W] x) => (float[N, 3, K] y) {
    s = Shape(x)
    st = Constant<value = int64[1] {0}>()
    en = Constant<value = int64[1] {1}>()
    n = Slice(s, st, en)
    c = Constant<value = int64[1] {3}>()
    hw = Constant<value = int64[1] {16}>()
    target = Concat<axis = 0>(n, c, hw)
    y = Reshape(x, target)
}"""


def _named(text: str):
    proto = parse(text)
    for i, node in enumerate(proto.graph.node):
        node.name = node.name or f"{node.op_type.lower()}{i}"
    return proto


def test_products_keep_fewest_factors_first_and_skip_static_ones():
    dims = [Factor(1, "1", False), Factor(3, "3", False), Factor(4, "H", True)]
    products = export_products([dims, [Factor(8, "W", True), None]])
    assert [f.label for f in products[4][0]] == ["H"]
    assert [f.label for f in products[12][0]] == ["3", "H"]
    assert 3 not in products and 1 not in products  # static only, and the 1s
    assert [f.label for f in products[8][0]] == ["W"]


def test_a_size_behind_shape_plumbing_is_found():
    model = Model(_named(VIEW))
    found = find_baked_constants(model, {16: "H*W"})
    assert [(b.node.op_type, b.tensor, b.hit, b.direct) for b in found] == [
        ("Reshape", "hw", 16, False)
    ]


def test_check_dynamic_names_the_constant_behind_a_concat():
    """Fails on the old check-dynamic: it looked only at constants read directly, so it
    found no suspect for these wrong output shapes."""
    # At level `all` onnxruntime runs the wrong sizes to wrong output shapes (the scan's
    # case); with optimisations off it refuses at the Reshape, and names it itself.
    check = check_dynamic(
        Model(_named(VIEW)), export={"H": 4, "W": 4}, options=RunOptions(optimization="all")
    )
    assert not check
    first = check.suspects[0]
    assert (first.node, first.constant, first.values) == ("reshape7", "hw", [16])
    assert first.source == "scan"
    assert any(c.ran and not c.passed for c in check.cases)
    assert "contains 16 = H*W at export (H=4, W=4)" in first.message()
