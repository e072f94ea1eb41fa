"""`surgeon diff` through the CLI: verdicts, exit codes, JSON keys, and every bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, parse, run_cli, write
from onnx import numpy_helper


def _edit_initializer(src: Path, dst: Path, name: str, change) -> Path:
    """Copy ``src`` to ``dst`` with ``change(array)`` applied to one initializer."""
    proto = onnx.load(str(src))
    for t in proto.graph.initializer:
        if t.name == name:
            w = numpy_helper.to_array(t).copy()
            change(w)
            t.CopyFrom(numpy_helper.from_array(w, name))
            onnx.save(proto, str(dst))
            return dst
    raise AssertionError(name)


def _perturbed(samples: Path) -> Path:
    def bump(w):
        w.flat[0] += 0.5

    return _edit_initializer(
        samples / "tiny_yolo.onnx", samples / "perturbed.onnx", "head/conv.weight", bump
    )


def _renamed(samples: Path, renames: dict[str, str]) -> Path:
    """tiny_yolo with graph inputs/outputs renamed (and every use of them)."""
    proto = onnx.load(str(samples / "tiny_yolo.onnx"))
    g = proto.graph
    for v in list(g.input) + list(g.output):
        v.name = renames.get(v.name, v.name)
    for n in g.node:
        n.input[:] = [renames.get(x, x) for x in n.input]
        n.output[:] = [renames.get(x, x) for x in n.output]
    return write(proto, samples / "renamed.onnx")


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _settings(text: str) -> str:
    return " ".join(text.split())  # rich may wrap long lines


# ---------------------------------------------------------------- verdicts
def test_diff_self_passes(samples):
    model = samples / "tiny_yolo.onnx"
    res = run_cli("diff", model, model)
    assert res.status == 0, res.stderr
    assert res.stdout.startswith("PASS: 1 tensor(s)")
    assert "output0" in res.stdout and " ok " in res.stdout
    flat = _settings(res.stdout)
    assert "seed=0" in flat and "atol=0.0001 rtol=0.0001" in flat
    assert "images: float32[1x3x64x64]" in flat


@pytest.mark.parametrize("name", ["two_conv.onnx", "if_model.onnx", "ext_weights.onnx"])
def test_diff_self_passes_for_other_samples(samples, name):
    res = run_cli("diff", samples / name, samples / name, "--exact", "--json")
    assert res.status == 0, res.stderr
    assert res.json["passed"] is True


def test_perturbed_weight_fails_with_exit_1_naming_the_output(samples):
    before = _files(samples.parent)
    bad = _perturbed(samples)
    res = run_cli("diff", samples / "tiny_yolo.onnx", bad, "--seed", "7")
    assert res.status == 1, res.stderr
    assert res.stdout.startswith("FAIL: 1 of 1 tensor(s) differ: `output0` (mismatch)")
    assert "output0" in res.stdout and "mismatch" in res.stdout
    assert "seed=7" in _settings(res.stdout)
    assert res.stderr == ""
    assert _files(samples.parent) == before | {bad}  # diff writes nothing

    res = run_cli("diff", samples / "tiny_yolo.onnx", bad, "--json")
    assert res.status == 1
    data = res.json
    assert data["passed"] is False and data["seed"] == 0
    [row] = data["tensors"]
    assert (row["name"], row["status"], row["passed"]) == ("output0", "mismatch", False)
    assert row["mismatches"] > 0 and row["max_abs"] > 0.01


def test_tolerances_decide(samples):
    bad = _perturbed(samples)
    res = run_cli("diff", samples / "tiny_yolo.onnx", bad, "--atol", "100", "--json")
    assert res.status == 0 and res.json["tolerance"] == {
        "atol": 100.0,
        "rtol": 1e-4,
        "exact": False,
        "cast": False,
    }


def test_exact(samples):
    def nudge(b):  # moves cx by ~4e-6: inside the default tolerance, not bit-identical
        b.flat[0] += 1e-6

    ulp = _edit_initializer(
        samples / "tiny_yolo.onnx", samples / "ulp.onnx", "head/conv.bias", nudge
    )
    ref = samples / "tiny_yolo.onnx"
    assert run_cli("diff", ref, ulp).status == 0
    res = run_cli("diff", ref, ulp, "--exact")
    assert res.status == 1
    assert "bit-identical" in _settings(res.stdout)
    res = run_cli("diff", ref, ref, "--exact")
    assert res.status == 0 and "bit-identical" in res.stdout


def test_map_renamed_output(samples):
    renamed = _renamed(samples, {"output0": "preds"})
    ref = samples / "tiny_yolo.onnx"
    res = run_cli("diff", ref, renamed, "--json")
    assert res.status == 1
    assert {t["name"]: t["status"] for t in res.json["tensors"]} == {
        "output0": "missing",
        "preds": "extra",
    }
    res = run_cli("diff", ref, renamed, "--map", "output0=preds")
    assert res.status == 0, res.stdout + res.stderr
    assert "preds ← output0" in res.stdout


def test_map_renamed_input_and_intermediate(samples):
    renamed = _renamed(samples, {"images": "data", "output0": "preds"})
    res = run_cli(
        "diff",
        samples / "tiny_yolo.onnx",
        renamed,
        "--map",
        "images=data",
        "--map",
        "output0=preds",
        "--map",
        "backbone/conv0_out=backbone/conv0_out",
        "--json",
        "--exact",
    )
    assert res.status == 0, res.stdout + res.stderr
    rows = [(t["name"], t["reference"], t["status"]) for t in res.json["tensors"]]
    assert rows == [
        ("preds", "output0", "ok"),
        ("backbone/conv0_out", "backbone/conv0_out", "ok"),
    ]


def test_inputs_npz(samples, tmp_path):
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.savez(tmp_path / "feeds.npz", images=images)
    model = samples / "tiny_yolo.onnx"
    res = run_cli("diff", model, model, "--feeds", tmp_path / "feeds.npz", "--json")
    assert res.status == 0, res.stderr
    assert res.json["seed"] is None  # every feed came from the file
    assert res.json["feeds"] == {
        "images": {"shape": [2, 3, 64, 64], "dtype": "float32", "from": "file"}
    }
    assert res.json["tensors"][0]["shape"] == [2, 7, 64]
    res = run_cli("diff", model, model, "--feeds", tmp_path / "feeds.npz")
    assert "feeds from file" in _settings(res.stdout)


@pytest.mark.parametrize(
    "spec, shape", [("images:3x3x64x64", [3, 3, 64, 64]), ("batch=2", [2, 3, 64, 64])]
)
def test_shape(samples, spec, shape):
    model = samples / "tiny_yolo.onnx"
    res = run_cli("diff", model, model, "--shape", spec, "--json")
    assert res.status == 0, res.stderr
    assert res.json["feeds"]["images"]["shape"] == shape
    assert res.json["tensors"][0]["shape"] == [shape[0], 7, 64]


def test_shape_of_named_dims(samples):
    model = samples / "two_conv.onnx"
    res = run_cli("diff", model, model, "--shape", "H=16", "--shape", "W=24", "--json")
    assert res.status == 0
    assert res.json["tensors"][0]["shape"] == [1, 4, 16, 24]


# ---------------------------------------------------------------- JSON keys
DIFF_TOP = {
    "schema",
    "title",
    "passed",
    "summary",
    "candidate",
    "reference",
    "seed",
    "tolerance",
    "feeds",
    "tensors",
    "notes",
}
DIFF_TENSOR = {
    "name",
    "reference",
    "status",
    "passed",
    "shape",
    "reference_shape",
    "dtype",
    "reference_dtype",
    "size",
    "mismatches",
    "max_abs",
    "max_rel",
    "cosine",
    "nan",
    "reference_nan",
    "inf",
    "reference_inf",
    "message",
}
STATUSES = {"ok", "mismatch", "shape", "dtype", "missing", "extra"}


def readme_json_keys(command: str) -> set[str]:
    """The names in backticks of the README's "JSON keys" paragraph for ``command``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## JSON keys", 1)[1].split("\n## ", 1)[0]
    para = next(p for p in section.split("\n\n") if p.startswith(f"`surgeon {command} --json`"))
    words = set(re.findall(r"`([^`]+)`", para))
    return {w for w in words if re.fullmatch(r"[a-z_]+", w)}


def test_json_keys_are_stable_and_documented(samples):
    model = samples / "tiny_yolo.onnx"
    data = run_cli("diff", model, model, "--json").json
    assert set(data) == DIFF_TOP
    assert set(data["tensors"][0]) == DIFF_TENSOR
    assert set(data["tolerance"]) == {"atol", "rtol", "exact", "cast"}
    assert set(data["feeds"]["images"]) == {"shape", "dtype", "from"}
    assert data["schema"] == "surgeon.diff/1"
    documented = readme_json_keys("diff")
    actual = DIFF_TOP | DIFF_TENSOR | {"atol", "rtol", "exact", "cast", "shape", "dtype", "from"}
    actual |= {"file", "random", "given"}  # the values of `from`
    # Everything the README promises exists (status values and `null`/`inf` aside).
    assert documented - STATUSES - {"null", "inf"} <= actual
    assert STATUSES <= documented


# ---------------------------------------------------------------- bad input
def _unsafe_external(tmp: Path) -> Path:
    inner = tmp / "inner"
    inner.mkdir()
    (tmp / "outside.bin").write_bytes(b"\0" * 32)
    proto = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 4] x) => (y) { y = Add(x, w) }""")
    w = numpy_helper.from_array(np.ones((2, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../outside.bin"), ("offset", "0"), ("length", "32")):
        w.external_data.add(key=k, value=v)
    proto.graph.initializer.append(w)
    return write(proto, inner / "m.onnx")


def _missing_external(tmp: Path) -> Path:
    (tmp / "samples" / "ext_weights.onnx.data").unlink()
    return tmp / "samples" / "ext_weights.onnx"


def _junk(tmp: Path) -> Path:
    p = tmp / "junk.onnx"
    p.write_text("definitely not a protobuf\n" * 10)
    return p


def _truncated(tmp: Path) -> Path:
    data = (tmp / "samples" / "tiny_yolo.onnx").read_bytes()
    p = tmp / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p


YOLO = "samples/tiny_yolo.onnx"

# Each case: how to build the bad argument list, and a phrase the message must hold.
BAD = {
    "missing file": (lambda t: [t / "nope.onnx", t / YOLO], "no such file"),
    "missing candidate": (lambda t: [t / YOLO, t / "samples/tiny_yol.onnx"], "tiny_yolo.onnx"),
    "not protobuf": (lambda t: [t / YOLO, _junk(t)], "junk.onnx"),
    "truncated": (lambda t: [_truncated(t), t / YOLO], "cut.onnx"),
    "missing external data": (
        lambda t: [_missing_external(t)] * 2,
        "external data file `ext_weights.onnx.data` is missing",
    ),
    "unsafe external location": (lambda t: [_unsafe_external(t)] * 2, "climbs out"),
    "unknown --map name": (
        lambda t: [t / YOLO, t / YOLO, "--map", "output=output0"],
        "no tensor `output` in the reference tiny_yolo.onnx; did you mean `output0`",
    ),
    "unknown --map names on both sides": (
        lambda t: [t / YOLO, t / YOLO, "--map", "output=output1"],
        "2 unknown tensor names",
    ),
    "malformed --map": (lambda t: [t / YOLO, t / YOLO, "--map", "output0"], "REF=CANDIDATE"),
    "malformed --shape": (
        lambda t: [t / YOLO, t / YOLO, "--shape", "images:1xAx64x64"],
        "--shape: cannot read the shape in `images:1xAx64x64`",
    ),
    "unknown --shape input": (
        lambda t: [t / YOLO, t / YOLO, "--shape", "image:1x3x64x64"],
        "did you mean `images`",
    ),
    "--shape against a static dim": (
        lambda t: [t / YOLO, t / YOLO, "--shape", "images:1x3x32x32"],
        "fixes it at 64",
    ),
    "negative --atol": (lambda t: [t / YOLO, t / YOLO, "--atol", "-1"], "atol"),
    "NaN --rtol": (lambda t: [t / YOLO, t / YOLO, "--rtol", "nan"], "rtol"),
    "negative --seed": (lambda t: [t / YOLO, t / YOLO, "--seed", "-1"], "--seed -1"),
    "missing --inputs file": (
        lambda t: [t / YOLO, t / YOLO, "--feeds", t / "feeds.npz"],
        "feeds.npz: no such file",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exit_2_one_paragraph_no_file(samples, case):
    tmp = samples.parent
    build, phrase = BAD[case]
    argv = build(tmp)
    before = _files(tmp)
    res = run_cli("diff", *argv)
    assert res.status == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert "\n\n" not in res.stderr.strip()  # one paragraph
    assert phrase in _settings(res.stderr), res.stderr
    assert _files(tmp) == before


def test_bad_npz_key_with_suggestion(samples, tmp_path):
    np.savez(tmp_path / "feeds.npz", image=np.zeros((1, 3, 64, 64), np.float32))
    model = samples / "tiny_yolo.onnx"
    res = run_cli("diff", model, model, "--feeds", tmp_path / "feeds.npz")
    assert res.status == 2 and "did you mean `images`" in res.stderr


def test_bad_input_as_json(samples):
    model = samples / "tiny_yolo.onnx"
    res = run_cli("diff", model, model, "--map", "output=output0", "--json")
    assert res.status == 2
    assert res.json["schema"] == "surgeon.error/1"
    assert res.json["suggestions"] == ["output0"]


def test_float16_conversion_against_float32_original(samples, tmp_path):
    # A float16 model takes float16 inputs: the feeds are cast, and --cast compares the
    # float16 outputs with the float32 ones by value.
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(samples / "two_conv.onnx"))
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    half = tmp_path / "half.onnx"
    onnx.save(m, str(half))
    strict = run_cli(
        "diff", samples / "two_conv.onnx", half, "--atol", "5e-2", "--rtol", "5e-2", "--json"
    )
    assert strict.status == 1 and strict.json["tensors"][0]["status"] == "dtype"
    loose = run_cli(
        "diff",
        samples / "two_conv.onnx",
        half,
        "--cast",
        "--atol",
        "5e-2",
        "--rtol",
        "5e-2",
        "--json",
    )
    assert loose.status == 0, loose.stdout
    assert "compared by value" in loose.json["tensors"][0]["message"]
    assert any("fed as float16" in n for n in loose.json["notes"])


def test_integers_get_no_relative_slack():
    from surgeon.compare import Tolerance, compare_arrays

    ids = np.array([200000, 7], np.int64)
    assert not compare_arrays(ids + np.array([1, 0]), ids, Tolerance(atol=0.0, rtol=1e-5))
    assert compare_arrays(ids + np.array([1, 0]), ids, Tolerance(atol=1.0, rtol=0.0))


def test_swapped_inputs_verify(tmp_path):
    import onnx

    from surgeon.loading import load
    from surgeon.verification import verify

    sub = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[3] a, float[3] b) => (y) { y = Sub(a, b) }""")
    swapped = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[3] b, float[3] a) => (y) { y = Sub(b, a) }""")
    onnx.save(sub, str(tmp_path / "sub.onnx"))
    onnx.save(swapped, str(tmp_path / "swapped.onnx"))
    report = verify(
        load(tmp_path / "swapped.onnx"), load(tmp_path / "sub.onnx"), name_map={"a": "b", "b": "a"}
    )
    assert report, report.summary()
    res = run_cli(
        "diff", tmp_path / "sub.onnx", tmp_path / "swapped.onnx", "--map", "a=b", "--map", "b=a"
    )
    assert res.status == 0, res.stdout + res.stderr


def test_common_only_compares_shared_outputs(samples, tmp_path):
    tapped = tmp_path / "tapped.onnx"
    assert (
        run_cli("debug", samples / "tiny_yolo.onnx", "--tap", "backbone/conv0", "-o", tapped).status
        == 0
    )
    assert run_cli("diff", samples / "tiny_yolo.onnx", tapped).status == 1  # an extra output
    res = run_cli("diff", samples / "tiny_yolo.onnx", tapped, "--common-only", "--json")
    assert res.status == 0
    assert [t["name"] for t in res.json["tensors"]] == ["output0"]
    assert any("backbone/conv0_out" in n for n in res.json["notes"])


# ---------------------------------------------------------------- integers
def _int64_constant(tmp_path: Path, name: str, value: int) -> Path:
    return write(
        parse(
            f"""<ir_version: 8, opset_import: ["" : 17]>
            g (int64[1] x) => (int64[2] y) {{
                c = Constant <value = int64[1] {{{value}}}> ()
                y = Concat <axis = 0> (x, c)
            }}"""
        ),
        tmp_path / name,
    )


@pytest.mark.parametrize("tolerance", [[], ["--atol", "0", "--rtol", "0"], ["--rtol", "0.5"]])
def test_int64_outputs_differing_by_one_near_2_pow_60_fail(tmp_path, tolerance):
    # Through float64 both values are 2**60: the old diff passed them at every tolerance.
    a = _int64_constant(tmp_path, "a.onnx", 2**60)
    b = _int64_constant(tmp_path, "b.onnx", 2**60 + 1)
    res = run_cli("diff", a, b, "--json", *tolerance)
    assert res.status == 1, res.stdout
    (y,) = res.json["tensors"]
    assert y["status"] == "mismatch" and y["mismatches"] == 1
    assert y["max_abs"] == 1 and isinstance(y["max_abs"], int)
    assert run_cli("diff", a, a).status == 0
    assert run_cli("diff", a, b, "--atol", "1").status == 0  # an integer atol of 1


# ---------------------------------------------------------------- nothing compared
def _two_outputs(tmp_path: Path, name: str, first: str, second: str) -> Path:
    return write(
        parse(
            f"""<ir_version: 8, opset_import: ["" : 17]>
            g (float[2, 3] x) => (float[2, 3] {first}, float[2, 3] {second}) {{
                {first} = Relu(x)
                {second} = Sigmoid(x)
            }}"""
        ),
        tmp_path / name,
    )


def test_common_only_with_no_shared_output_fails_and_lists_both_sides(tmp_path):
    ref = _two_outputs(tmp_path, "ref.onnx", "boxes", "scores")
    cand = _two_outputs(tmp_path, "cand.onnx", "boxes_out", "logits")
    res = run_cli("diff", ref, cand, "--common-only", "--json")
    # A verification that compared nothing proves nothing: exit 1 (as plain diff does for
    # the same pair), not "PASS: 0 tensor(s)".
    assert res.status == 1, res.stdout
    doc = res.json
    assert doc["passed"] is False and doc["tensors"] == []
    assert doc["summary"].startswith("FAIL: no tensor was compared")
    notes = " ".join(doc["notes"])
    assert "the reference's: `boxes`, `scores`" in notes
    assert "the candidate's: `boxes_out`, `logits`" in notes
    assert "pair them with --map boxes=boxes_out" in notes
    text = run_cli("diff", ref, cand, "--common-only")
    assert text.status == 1
    out = _settings(text.stdout)
    assert "FAIL: no tensor was compared" in out and "PASS" not in out
    assert "--map boxes=boxes_out" in out
    # Without --common-only the same models fail too, with the same hints.
    plain = run_cli("diff", ref, cand, "--json")
    assert plain.status == 1 and "--map boxes=boxes_out" in " ".join(plain.json["notes"])
    # and the suggested --map pairs them (`scores` and `logits` stay out: --common-only)
    mapped = run_cli("diff", ref, cand, "--map", "boxes=boxes_out", "--common-only", "--json")
    assert mapped.status == 0, mapped.stdout
    assert [t["name"] for t in mapped.json["tensors"]] == ["boxes_out"]


def test_one_renamed_output_on_each_side_gets_its_map(tmp_path):
    """Names that look nothing alike (output0 -> preds): one output each, one --map."""
    model = """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] {name}) {{ {name} = Relu(x) }}"""
    ref = write(parse(model.format(name="output0")), tmp_path / "ref.onnx")
    cand = write(parse(model.format(name="preds")), tmp_path / "cand.onnx")
    res = run_cli("diff", ref, cand, "--common-only", "--json")
    assert res.status == 1
    assert "pair the two outputs with --map output0=preds" in " ".join(res.json["notes"])
    assert run_cli("diff", ref, cand, "--map", "output0=preds").status == 0


def test_debug_help_shows_the_optimization_it_uses():
    res = run_cli("debug", "--help")  # --help goes to the console main was given
    assert "(default disabled)" in " ".join(res.stdout.split())


def test_seed_is_kept_when_some_inputs_come_from_the_file(tmp_path):
    """`sr` from the file, `x` made from the seed: the seed matters and is reported, and
    the footer names the inputs that came from the file."""
    path = tmp_path / "two.onnx"
    onnx.save(
        onnx.parser.parse_model(
            """<ir_version: 8, opset_import: ["" : 17]>
            g (float[N, 4] x, int64 sr) => (float[N, 4] y) { y = Relu(x) }"""
        ),
        str(path),
    )
    np.savez(tmp_path / "sr.npz", sr=np.array(16000, dtype=np.int64))
    args = ("diff", path, path, "--feeds", tmp_path / "sr.npz", "--seed", "5")
    res = run_cli(*args, "--json")
    assert res.status == 0, res.stderr
    assert res.json["seed"] == 5
    assert {k: v["from"] for k, v in res.json["feeds"].items()} == {"x": "random", "sr": "file"}
    res = run_cli(*args)
    assert "seed=5 (from file: sr)" in _settings(res.stdout)
