"""`reshape_io` and `check_dynamic`: dims set after export, and runs at several sizes that
catch sizes baked into Reshape/Slice constants (naming the node that holds them)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, write
from onnx.reference import ReferenceEvaluator

from surgeon.dims import parse_dims, parse_io_spec, parse_sizes
from surgeon.dynamic import check_dynamic
from surgeon.edits.shapes import reshape_io
from surgeon.errors import NameNotFoundError, UsageError
from surgeon.loading import load
from surgeon.model import Model
from surgeon.recipes import make_dynamic


def named(text: str, **names: str) -> onnx.ModelProto:
    """Parse a model and name its nodes: ``named(text, flatten="Reshape")``."""
    proto = parse(text)
    for name, op in names.items():
        next(n for n in proto.graph.node if n.op_type == op and not n.name).name = name
    return proto


# Exported at 1x3x32x32: the flatten's shape constant holds 3072 = 3*32*32.
BAKED_STATIC = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[1, 3, 32, 32] x) => (float[1, 3072] y) {
    s = Constant<value = int64[2] {1, 3072}>()
    y = Reshape(x, s)
}"""
# The same export with its input dims declared dynamic afterwards (the model lies).
BAKED_DYNAMIC = BAKED_STATIC.replace("float[1, 3, 32, 32] x", "float[N, 3, H, W] x").replace(
    "float[1, 3072] y", "float[N, 3072] y"
)
# Truly dynamic: pooled, then Reshape with 0 (copy N) and -1 (the rest).
POOLED = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, H, W] x) => (float[N, 3] y) {
    g = GlobalAveragePool(x)
    s = Constant<value = int64[2] {0, -1}>()
    y = Reshape(g, s)
}"""
# Truly dynamic through Shape ops: flatten to [N, 3*H*W].
SHAPE_OPS = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, 3, H, W] x) => (float[N, M] y) {
    shp = Shape(x)
    zero = Constant<value = int64[1] {0}>()
    one = Constant<value = int64[1] {1}>()
    n = Slice(shp, zero, one)
    rest = Constant<value = int64[1] {-1}>()
    target = Concat<axis = 0>(n, rest)
    y = Reshape(x, target)
}"""
# Exported at seq=16: the Slice's end is baked, so longer inputs give a short output.
SLICED = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 16] x) => (float[2, 16] y) {
    st = Constant<value = int64[1] {0}>()
    en = Constant<value = int64[1] {16}>()
    ax = Constant<value = int64[1] {1}>()
    y = Slice(x, st, en, ax)
}"""


# ---------------------------------------------------------------------- parsing
def test_parse_dims():
    assert parse_dims("Bx3xHxW") == ("B", 3, "H", "W")
    assert parse_dims("[batch, max_len]") == ("batch", "max_len")
    assert parse_dims("1x?x-1") == (1, None, None)
    assert parse_io_spec("input:0:Nx3") == ("input:0", ("N", 3))
    assert parse_sizes(["H=224,320", "images[0]=1,2"]) == {"H": [224, 320], "images[0]": [1, 2]}
    for bad in ("", "3x$", "1x-2"):
        with pytest.raises(UsageError):
            parse_dims(bad)
    with pytest.raises(UsageError, match="cannot read the dims `out.onnx`: expected NAME:DIMS"):
        parse_io_spec("out.onnx")
    with pytest.raises(UsageError, match="DIM=SIZE"):
        parse_sizes(["H"])


# ---------------------------------------------------------------------- check-dynamic
def test_baked_reshape_fails_naming_the_node(cli, tmp_path):
    model = Model(named(BAKED_DYNAMIC, flatten="Reshape"))
    check = check_dynamic(model)
    assert not check
    assert not any(c.ran for c in check.cases)  # 3*64*64 != 3072 at every size tried
    assert {c.failed_node for c in check.cases} == {"flatten"}
    first = check.suspects[0]
    assert (first.node, first.op_type, first.values) == ("flatten", "Reshape", [1, 3072])
    assert first.message().startswith("baked constant in node `flatten` (Reshape): shape [1, 3072]")
    path = write(model.proto, tmp_path / "baked.onnx")
    res = cli("check-dynamic", path)
    assert res.status == 1 and "baked constant in node `flatten` (Reshape)" in res.stdout
    doc = cli("check-dynamic", path, "--json").json
    assert doc["schema"] == "surgeon.check-dynamic/1" and doc["passed"] is False
    assert doc["suspects"][0]["node"] == "flatten"
    assert set(doc["cases"][0]) == {
        "label",
        "dims",
        "varied",
        "input_shapes",
        "ran",
        "passed",
        "error",
        "failed_node",
        "outputs",
    }


@pytest.mark.parametrize("text", [POOLED, SHAPE_OPS], ids=["reshape-0-minus-1", "shape-ops"])
def test_truly_dynamic_model_passes_at_several_sizes(cli, tmp_path, text):
    model = Model(parse(text))
    check = check_dynamic(model)
    assert check, check.summary()
    assert [d.values for d in check.dims] == [[1, 3], [64, 96], [64, 96]]
    assert len(check.cases) == 4  # the first sizes, then N, H and W varied one at a time
    for case in check.cases:
        n, h, w = case.dims["N"], case.dims["H"], case.dims["W"]
        # numpy reference for the output shape at these sizes
        x = np.zeros((n, 3, h, w), np.float32)
        want = x.mean(axis=(2, 3)).shape if text is POOLED else x.reshape(n, -1).shape
        assert case.outputs[0].shape == list(want)
    assert {(c.dims["H"], c.dims["W"]) for c in check.cases} == {(64, 64), (96, 64), (64, 96)}
    res = cli("check-dynamic", write(model.proto, tmp_path / "m.onnx"), "--sizes", "H=32,48,80")
    assert res.status == 0 and "PASS: 5 of 5" in res.stdout  # base, N=3, H=48, H=80, W=96


def test_wrong_output_shape_is_caught_and_the_slice_named():
    model = Model(named(SLICED, cut="Slice"))
    edited = reshape_io(model, {"x": "Nxseq"}, {"y": "Nxseq"})
    assert not edited
    check = edited.details["dynamic"]
    long_run = next(c for c in check["cases"] if c["dims"]["seq"] == 24)
    assert long_run["ran"] and not long_run["passed"]
    assert long_run["outputs"][0]["problem"] == "dim 1 is 16, expected 24 (seq=24)"
    assert check["suspects"][0]["message"] == (
        "baked constant in node `cut` (Slice): ends [16] contains 16 = seq at export"
    )
    assert edited.report.failures[0].name == "y @ N=2, seq=24"


def test_sizes_naming_unknown_dims(cli, samples):
    res = cli("check-dynamic", samples / "two_conv.onnx", "--sizes", "h=32,64")
    assert res.status == 2 and "did you mean `H`" in res.stderr
    res = cli("check-dynamic", samples / "two_conv.onnx", "--sizes", "H=0")
    assert res.status == 2 and ">= 1" in res.stderr


def test_static_model_runs_once(samples):
    check = check_dynamic(load(samples / "if_model.onnx"))
    assert check and len(check.cases) == 1 and "no dynamic dims" in check.notes[0]


# ---------------------------------------------------------------------- reshape-io
def test_reshape_io_on_a_static_export_names_the_export_sizes(cli, tmp_path):
    path = write(named(BAKED_STATIC, flatten="Reshape"), tmp_path / "static.onnx")
    edited = reshape_io(load(path), {"x": "Nx3xHxW"})
    assert not edited
    assert edited.details["export"] == {"N": 1, "H": 32, "W": 32}
    assert edited.report.tensors[0].passed  # same values at the export size
    assert (
        "baked constant in node `flatten` (Reshape): shape [1, 3072] contains 3072 = 3*H*W "
        "at export (H=32, W=32)"
    ) in edited.report.notes
    out = tmp_path / "dyn.onnx"
    res = cli("reshape-io", path, "--dims", "x:Nx3xHxW", "-o", out)
    assert res.status == 1 and not out.exists()
    assert "3072 = 3*H*W" in res.stdout and "not written" in res.stdout


def test_reshape_io_on_the_detector(cli, samples, tmp_path):
    out = tmp_path / "dyn.onnx"
    res = cli(
        "reshape-io", samples / "tiny_yolo.onnx", "--dims", "images:Bx3x64x64", "-o", out, "--json"
    )
    assert res.status == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["edit"] == "reshape_io" and doc["written"]
    assert doc["details"]["inputs"] == [
        {"name": "images", "old": ["batch", 3, 64, 64], "new": ["B", 3, 64, 64]}
    ]
    # the output's batch symbol follows the input's new name
    assert doc["details"]["outputs"][0]["new"] == ["B", 7, 64]
    assert doc["details"]["dynamic"]["passed"] and doc["verification"]["tolerance"]["atol"] == 1e-4
    written = load(out)
    assert written.inputs[0].shape == ("B", 3, 64, 64)
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    (want,) = ReferenceEvaluator(load(samples / "tiny_yolo.onnx").proto).run(None, {"images": x})
    (got,) = ReferenceEvaluator(written.proto).run(None, {"images": x})
    assert np.array_equal(got, want) and got.shape == (3, 7, 64)


def test_detector_spatial_dims_are_not_dynamic(samples):
    """tiny_yolo's decode grid is a [1, 2, 64] constant: H, W cannot change. The check
    fails and names the node onnxruntime failed in, with the constant it reads."""
    edited = reshape_io(load(samples / "tiny_yolo.onnx"), {"images": "Bx3xHxW"})
    assert not edited
    assert edited.report.tensors[0].passed  # values at 64x64 are unchanged
    assert any(
        "node `head/xy_add_grid` (Add) failed" in n and "`head/grid` of shape [1, 2, 64]" in n
        for n in edited.report.notes
    )


def test_stale_value_info_is_refreshed():
    proto = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[1, 3, 32, 32] x) => (float[1, 3, 32, 32] y) {
        a = Relu(x)
        y = Neg(a)
    }""")
    proto.graph.value_info.append(
        onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    )
    edited = reshape_io(Model(proto), {"x": "Nx3xHxW"})
    assert edited, edited.report.summary()
    infos = {v.name: v for v in edited.model.proto.graph.value_info}
    dims = [d.dim_param or d.dim_value for d in infos["a"].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    assert edited.model.outputs[0].shape == ("N", 3, "H", "W")
    assert edited.details["value_info"]["refreshed"] == 1


def test_fixing_a_dim_static(samples):
    edited = reshape_io(load(samples / "two_conv.onnx"), {"in": "1x3x64x64"})
    assert edited and edited.model.outputs[0].shape == (1, 4, 64, 64)
    assert "no dynamic dims" in edited.details["dynamic"]["notes"][0]


def test_incompatible_static_dims_cannot_be_compared_and_fail_to_run(samples):
    edited = reshape_io(load(samples / "tiny_yolo.onnx"), {"images": "Bx4x64x64"})
    assert not edited
    assert any("could not be compared" in n for n in edited.report.notes)
    assert not any(c["ran"] for c in edited.details["dynamic"]["cases"])


def test_reshape_io_errors(cli, samples, tmp_path):
    model = load(samples / "tiny_yolo.onnx")
    with pytest.raises(NameNotFoundError, match="did you mean `images`"):
        reshape_io(model, {"imgs": "Bx3x64x64"})
    with pytest.raises(UsageError, match="rank 4"):
        reshape_io(model, {"images": "Bx3x64"})
    with pytest.raises(UsageError, match="nothing to change"):
        reshape_io(model, {})
    out = tmp_path / "o.onnx"
    for argv, message in (
        (["--dims", "imgs:Bx3x64x64"], "did you mean `images`"),
        (["--dims", "images:Bx3x6$"], "cannot read dim"),
        (["--dims", "nothing:1x2"], "neither an input nor an output"),
        (["--dims", "images:Bx3xHxW", "--sizes", "Q=3"], "dynamic dim `Q`"),
    ):
        res = cli("reshape-io", samples / "tiny_yolo.onnx", *argv, "-o", out)
        assert res.status == 2, (argv, res.stderr)
        assert message in res.stderr and not out.exists()


# ---------------------------------------------------------------------- the recipe
def test_make_dynamic_recipe(samples):
    edited = make_dynamic.recipe([load(samples / "two_conv.onnx")], sizes="height=32,64")
    assert edited and edited.model.inputs[0].shape == ("batch", 3, "height", "width")
    assert edited.model.outputs[0].shape == ("batch", 4, "height", "width")
    heights = {c["dims"]["height"] for c in edited.details["dynamic"]["cases"]}
    assert heights == {32, 64}
    detector = make_dynamic.recipe([load(samples / "tiny_yolo.onnx")], spatial=False)
    assert detector
    with pytest.raises(UsageError, match="rank-4"):
        make_dynamic.recipe([load(samples / "ext_weights.onnx")])


# ---------------------------------------------------------------------- `?` is not a name
def question_marks(text: str, unnamed=("?",)) -> onnx.ModelProto:
    """Parse a model, then write its input dims named U* as the unnamed tokens exporters
    use (Paddle writes `?` for every unknown dim; some converters `-1` or a blank)."""
    proto = parse(text)
    tokens = iter(unnamed * 4)
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param.startswith("U"):
                d.dim_param = next(tokens) if vi in proto.graph.input else "?"
    return proto


# Every unknown dim of the input and the output is `?` (or `-1`, blank): none is tied.
QUESTION_MARKS = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[U0, 3, U1, U2] x) => (float[U3, 3, U4, U5] y) {
    y = Relu(x)
}"""


def test_question_mark_dims_are_independent(cli, tmp_path):
    model = Model(question_marks(QUESTION_MARKS))
    assert model.inputs[0].shape == (None, 3, None, None)
    check = check_dynamic(model)
    assert check, check.summary()
    # Three unknowns, varied one at a time (old code: one dim `?` for x[0], x[2], x[3])
    assert [(d.name, d.kind) for d in check.dims] == [
        ("x[0]", "batch"),
        ("x[2]", "spatial"),
        ("x[3]", "spatial"),
    ]
    shapes = {tuple(c.input_shapes["x"]) for c in check.cases}
    assert shapes == {(1, 3, 64, 64), (3, 3, 64, 64), (1, 3, 96, 64), (1, 3, 64, 96)}
    path = write(model.proto, tmp_path / "q.onnx")
    # old code: "--shape gives `x` dim 2 (?) = 48, but ... already sets ? = 1"
    res = cli("reshape-io", path, "--dims", "x:Bx3x48xW", "--json")
    assert res.status == 0, res.stdout + res.stderr
    doc = res.json
    assert doc["details"]["outputs"][0]["new"] == ["B", 3, 48, "W"]
    assert doc["verification"]["feeds"]["x"]["shape"] == [1, 3, 48, 64]
    # --shape with different values for two `?` dims, and `--sizes x[2]=...`
    res = cli("debug", path, "--shape", "x:2x3x48x100", "--json")
    assert res.status == 0, res.stderr
    res = cli("check-dynamic", path, "--sizes", "x[2]=32,48", "--json")
    assert res.status == 0 and [c["input_shapes"]["x"] for c in res.json["cases"]][:2] == [
        [1, 3, 32, 64],
        [3, 3, 32, 64],
    ]


@pytest.mark.parametrize("unnamed", [("?",), ("?", "-1", " ")], ids=["all-?", "?-minus1-blank"])
def test_question_mark_dims_in_declarations_are_not_one_symbol(unnamed):
    from surgeon.feeds import FeedOptions, resolve_shapes
    from surgeon.shapecheck import declared_vs_actual

    model = Model(question_marks(QUESTION_MARKS, unnamed))
    assert model.inputs[0].shape == (None, 3, None, None)
    shapes = resolve_shapes(model, FeedOptions(shapes={"x": (2, 3, 48, 100)}))
    assert shapes == {"x": (2, 3, 48, 100)}
    x = np.zeros((2, 3, 48, 100), np.float32)
    assert declared_vs_actual(model, {"x": x, "y": x}) == []  # `?` = 2 and `?` = 48 is fine
    # a real symbol still binds: N = 2 in x but 3 in y is a disagreement
    tied = Model(parse(QUESTION_MARKS.replace("U0", "N").replace("U3", "N")))
    found = declared_vs_actual(tied, {"x": x, "y": np.zeros((3, 3, 48, 100), np.float32)})
    assert [m.kind for m in found] == ["symbol"]


# ---------------------------------------------------------------------- stale output declarations
# y is really [W, 2, N] (x transposed, a new axis, doubled on it) but declared [N, seqlen]
# (rank 2), as in ddddocr's common.onnx; the check then fails on the stale rank.
STALE_OUTPUT = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[N, W] x) => (float[N, seqlen] y, float[N] z) {
    one = Constant<value = int64[1] {1}>()
    t = Transpose<perm = [1, 0]>(x)
    u = Unsqueeze(t, one)
    y = Concat<axis = 1>(u, u)
    z = ReduceSum<keepdims = 0>(x, one)
}"""


def _reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of STALE_OUTPUT."""
    u = x.T[:, None, :]
    return np.concatenate([u, u], axis=1), x.sum(axis=1)


def test_declare_outputs_fixes_a_stale_rank(cli, tmp_path):
    model = Model(parse(STALE_OUTPUT))
    assert not check_dynamic(model)  # the stale rank fails the check
    edited = reshape_io(model, declare_outputs=True)
    assert edited, edited.report.summary()
    # W and N follow the input's dims, 2 is static (the old spare name `seqlen` is not needed)
    assert edited.model.outputs[0].shape == ("W", 2, "N")
    assert edited.model.outputs[1].shape == ("N",)
    outs = {o["name"]: o for o in edited.details["outputs"]}
    assert outs["y"]["as_run"] and outs["y"]["old"] == ["N", "seqlen"]
    assert edited.report.tensors[0].passed  # same values at the original's sizes
    assert edited.details["dynamic"]["passed"]
    x = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    got = ReferenceEvaluator(edited.model.proto).run(None, {"x": x})
    for g, w in zip(got, _reference(x), strict=True):
        assert g.shape == w.shape and np.array_equal(g, w)
    path = write(model.proto, tmp_path / "stale.onnx")
    out = tmp_path / "fixed.onnx"
    res = cli("reshape-io", path, "--declare-outputs", "-o", out)
    assert res.status == 0, res.stdout + res.stderr
    assert "(as run)" in res.stdout and load(out).outputs[0].shape == ("W", 2, "N")


def test_declare_outputs_keeps_the_old_name_of_a_derived_dim():
    # y is [W/2] (a strided Slice): it follows no input dim, so it keeps the old name
    proto = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[1, W] x) => (float[1, 1, seqlen] y) {
        st = Constant<value = int64[1] {0}>()
        en = Constant<value = int64[1] {9999}>()
        ax = Constant<value = int64[1] {1}>()
        sp = Constant<value = int64[1] {2}>()
        y = Slice(x, st, en, ax, sp)
    }""")
    edited = reshape_io(Model(proto), declare_outputs=True)
    assert edited, edited.report.summary()
    assert edited.model.outputs[0].shape == (1, "seqlen")
    assert edited.details["outputs"][0]["produced"] == [1, 32]  # W=64 (spatial), strided
    x = np.arange(10, dtype=np.float32)[None]
    (got,) = ReferenceEvaluator(edited.model.proto).run(None, {"x": x})
    assert np.array_equal(got, x[:, ::2])


def test_output_rank_change_allowed_when_the_model_produces_it(cli, tmp_path):
    model = Model(parse(STALE_OUTPUT))
    edited = reshape_io(model, inputs={"x": "BxW"}, outputs={"y": "Wx2xB"})
    assert edited, edited.report.summary()
    assert edited.model.outputs[0].shape == ("W", 2, "B")
    assert edited.details["outputs"][0]["produced"] == [64, 2, 1]
    # the model does not produce rank 4: refused with the shape it does produce
    with pytest.raises(UsageError) as err:
        reshape_io(model, outputs={"y": "Wx2xNx1"})
    want = "output `y` is [64, 2, 1] at N=1, W=64 when the model runs (rank 3)"
    assert any(want in p for p in err.value.problems)
    path = write(model.proto, tmp_path / "stale.onnx")
    out = tmp_path / "o.onnx"
    res = cli("reshape-io", path, "--dims", "y:Wx2xNx1", "-o", out)
    assert res.status == 2 and "[64, 2, 1] at N=1, W=64" in res.stderr and not out.exists()
    # an input's rank still cannot change
    with pytest.raises(UsageError, match="rank 2"):
        reshape_io(model, {"x": "NxWx1"})


def test_declare_outputs_errors(cli, tmp_path):
    # the first sizes do not run (3*64*64 != 3072): nothing to declare, exit 2
    path = write(named(BAKED_DYNAMIC, flatten="Reshape"), tmp_path / "baked.onnx")
    res = cli("reshape-io", path, "--declare-outputs")
    assert res.status == 2, res.stdout + res.stderr
    # N=1 runs, N=3 does not: which output dims follow N cannot be told
    proto = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[N, 4] x) => (float[N, 4] y) {
        s = Constant<value = int64[2] {1, 4}>()
        y = Reshape(x, s)
    }""")
    with pytest.raises(UsageError, match="input dim\\(s\\) `N`: the model ran at one size"):
        reshape_io(Model(proto), declare_outputs=True)
    res = cli("reshape-io", write(proto, tmp_path / "n.onnx"), "--declare-outputs")
    assert res.status == 2 and "requested shape:{1,4}" in res.stderr


def test_declare_outputs_refuses_sizes_beyond_the_feed_limit_before_running(monkeypatch):
    """The runs that find the real output shapes are bounded like check-dynamic's: a
    size whose inputs would pass max_feed_bytes is refused before any run."""
    from surgeon.feeds import FeedOptions
    from surgeon.runner import Session

    ran = []
    monkeypatch.setattr(Session, "run", lambda self, feeds: ran.append(feeds))
    with pytest.raises(UsageError, match="max_feed_bytes|would take"):
        reshape_io(
            Model(parse(STALE_OUTPUT)),
            declare_outputs=True,
            sizes={"W": [4, 2**20]},  # the first size fits, the second does not
            feed_options=FeedOptions(max_feed_bytes=2**16),
        )
    assert ran == []
