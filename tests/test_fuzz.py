"""Malformed models: every command either succeeds or exits 2 with a message.

Two halves. First, each kind of damage a model file can have in practice (truncated,
flipped bytes, a removed initializer, a dangling input, a name produced twice, a cycle,
an output nobody produces, a wrong opset, a missing external data file, ...) goes through
every command that takes one model. Second, hypothesis mutates the bytes of the sample
models at random. In both, no command may show a traceback or an internal error (exit 3),
leave a partial or temporary file, or touch its input; a refusal is exit 2 with a message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
import pytest
from conftest import SAMPLES, run_cli
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import surgeon
from surgeon.cli import COMMANDS

# Per sample model: an extraction (inputs, outputs), an output to rename, an input spec
# for reshape-io.
SAMPLE_ARGS = {
    "two_conv.onnx": ("in", "conv0_out", "out", "in:1x3xHxW"),
    "tiny_yolo.onnx": ("images", "backbone/act0_out", "output0", "images:Bx3x64x64"),
    "if_model.onnx": ("x", "y", "y", "x:2x3"),
    "ext_weights.onnx": ("x", "fc0_out", "y", "x:Nx16"),
}


def command_lines(model: Path, out: Path, sample: str) -> dict[str, list]:
    """Every command that takes a single model, with an output where it writes one."""
    cut_in, cut_out, output, spec = SAMPLE_ARGS[sample]
    lines = {
        "inspect": ["inspect", model],
        "debug": ["debug", model, "-o", out],
        "diff": ["diff", model, model],
        "extract": ["extract", model, "--inputs", cut_in, "--outputs", cut_out, "-o", out],
        "rename": ["rename", model, "--map", f"{output}=renamed", "-o", out],
        "reshape-io": ["reshape-io", model, "--dims", spec, "-o", out],
        "check-dynamic": ["check-dynamic", model],
    }
    return {k: v for k, v in lines.items() if k in COMMANDS}


def check_outcome(result, folder: Path, model: Path, before: dict[str, bytes], out: Path):
    """The invariants every run must keep, whatever the input."""
    text = result.stdout + result.stderr
    assert result.status in (0, 1, 2), text
    assert "Traceback" not in text and "internal error" not in text, text
    if result.status == 2:
        assert result.stderr.strip() or result.stdout.strip()  # a message, not silence
        assert not out.exists(), "a refused command wrote its output"
    if out.exists():  # complete and loadable, never partial
        surgeon.load(out)
        out.unlink()
        data = out.with_name(out.name + ".data")
        if data.exists():
            data.unlink()
    # inputs untouched; no temporary files left behind
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def _copy_sample(folder: Path, sample: str) -> Path:
    shutil.copy(SAMPLES / sample, folder / sample)
    if sample == "ext_weights.onnx":
        shutil.copy(SAMPLES / "ext_weights.onnx.data", folder / "ext_weights.onnx.data")
    return folder / sample


# ---------------------------------------------------------------------- each kind of damage
def _proto(sample: str) -> onnx.ModelProto:
    return onnx.load(str(SAMPLES / sample), load_external_data=False)


def _save(proto: onnx.ModelProto, folder: Path, sample: str) -> Path:
    path = folder / sample
    path.write_bytes(proto.SerializeToString())
    return path


def damage_truncated(folder):
    data = (SAMPLES / "tiny_yolo.onnx").read_bytes()
    (folder / "tiny_yolo.onnx").write_bytes(data[: len(data) // 2])
    return "tiny_yolo.onnx", "not a readable ONNX model"


def damage_flipped(folder):
    data = bytearray((SAMPLES / "tiny_yolo.onnx").read_bytes())
    for i in range(0, 64, 4):  # the header: field tags and lengths
        data[i] ^= 0xFF
    (folder / "tiny_yolo.onnx").write_bytes(bytes(data))
    return "tiny_yolo.onnx", "tiny_yolo.onnx"


def damage_removed_initializer(folder):
    proto = _proto("two_conv.onnx")
    del proto.graph.initializer[0]
    _save(proto, folder, "two_conv.onnx")
    return "two_conv.onnx", "`conv0.weight`, which no node, input or initializer defines"


def damage_dangling_input(folder):
    proto = _proto("tiny_yolo.onnx")
    proto.graph.node[3].input[0] = "nowhere"
    _save(proto, folder, "tiny_yolo.onnx")
    return "tiny_yolo.onnx", "`nowhere`"


def damage_duplicate_name(folder):
    proto = _proto("tiny_yolo.onnx")
    proto.graph.node[2].output[0] = proto.graph.node[0].output[0]
    _save(proto, folder, "tiny_yolo.onnx")
    return "tiny_yolo.onnx", "produced twice"


def damage_duplicate_initializer(folder):
    proto = _proto("two_conv.onnx")
    twin = proto.graph.initializer.add()
    twin.CopyFrom(proto.graph.initializer[1])
    _save(proto, folder, "two_conv.onnx")
    return "two_conv.onnx", "initializer `conv0.bias` is defined twice"


def damage_cycle(folder):
    proto = _proto("tiny_yolo.onnx")
    proto.graph.node[0].input[0] = proto.graph.node[4].output[0]
    _save(proto, folder, "tiny_yolo.onnx")
    return "tiny_yolo.onnx", "cycle"


def damage_output_without_producer(folder):
    proto = _proto("two_conv.onnx")
    proto.graph.output[0].name = "ghost"
    _save(proto, folder, "two_conv.onnx")
    return "two_conv.onnx", "`ghost` has no producer"


def damage_wrong_opset(folder):
    proto = _proto("tiny_yolo.onnx")
    proto.opset_import[0].version = 999
    _save(proto, folder, "tiny_yolo.onnx")
    return "tiny_yolo.onnx", "opset 999"


def damage_no_opset(folder):
    proto = _proto("two_conv.onnx")
    del proto.opset_import[:]
    _save(proto, folder, "two_conv.onnx")
    return "two_conv.onnx", "opset"


def damage_missing_external_data(folder):
    shutil.copy(SAMPLES / "ext_weights.onnx", folder / "ext_weights.onnx")
    return "ext_weights.onnx", "ext_weights.onnx.data` is missing"


def damage_truncated_external_data(folder):
    shutil.copy(SAMPLES / "ext_weights.onnx", folder / "ext_weights.onnx")
    data = (SAMPLES / "ext_weights.onnx.data").read_bytes()
    (folder / "ext_weights.onnx.data").write_bytes(data[: len(data) // 3])
    return "ext_weights.onnx", "past the end"


def damage_weights_of_wrong_size(folder):
    proto = _proto("two_conv.onnx")
    proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:-4]
    _save(proto, folder, "two_conv.onnx")
    return "two_conv.onnx", "`conv0.weight` holds 860 bytes"


def damage_unknown_standard_op(folder):
    proto = _proto("two_conv.onnx")
    proto.graph.node[1].op_type = "Convolve"
    _save(proto, folder, "two_conv.onnx")
    return "two_conv.onnx", "Convolve"


def damage_garbled_text(folder):
    data = (SAMPLES / "two_conv.onnx").read_bytes()
    # Every mention of the name, so the graph stays consistent: only the UTF-8 is broken.
    (folder / "two_conv.onnx").write_bytes(data.replace(b"conv0.weight", b"conv0\xffweight"))
    return "two_conv.onnx", "not valid UTF-8"


def damage_unknown_element_type(folder):
    proto = _proto("tiny_yolo.onnx")
    proto.graph.input[0].type.tensor_type.elem_type = 91
    _save(proto, folder, "tiny_yolo.onnx")
    return "tiny_yolo.onnx", "element type 91"


def damage_not_a_model(folder):
    (folder / "two_conv.onnx").write_bytes(b"\x08\x07" + b"\xff" * 200)
    return "two_conv.onnx", "two_conv.onnx"


DAMAGE = {
    "truncated": damage_truncated,
    "flipped": damage_flipped,
    "removed_initializer": damage_removed_initializer,
    "dangling_input": damage_dangling_input,
    "duplicate_name": damage_duplicate_name,
    "duplicate_initializer": damage_duplicate_initializer,
    "cycle": damage_cycle,
    "output_without_producer": damage_output_without_producer,
    "wrong_opset": damage_wrong_opset,
    "no_opset": damage_no_opset,
    "missing_external_data": damage_missing_external_data,
    "truncated_external_data": damage_truncated_external_data,
    "weights_of_wrong_size": damage_weights_of_wrong_size,
    "unknown_standard_op": damage_unknown_standard_op,
    "garbled_text": damage_garbled_text,
    "unknown_element_type": damage_unknown_element_type,
    "not_a_model": damage_not_a_model,
}

COMMAND_NAMES = [c for c in command_lines(Path("m"), Path("o"), "two_conv.onnx")]
# Damage only a run can see (onnx has no schema check at load): inspect may succeed.
SEEN_WHEN_RUN = {"unknown_standard_op"}


@pytest.mark.parametrize("command", COMMAND_NAMES)
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_kind_of_damage_is_refused_by_each_command(tmp_path, kind, command):
    sample, fragment = DAMAGE[kind](tmp_path)
    model = tmp_path / sample
    out = tmp_path / "out.onnx"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = run_cli(*command_lines(model, out, sample)[command])
    check_outcome(result, tmp_path, model, before, out)
    if command == "inspect" and kind in SEEN_WHEN_RUN:
        assert result.status == 0
        return
    assert result.status == 2, result.stdout + result.stderr
    assert fragment in " ".join((result.stdout + result.stderr).split())


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_kind_of_damage_is_a_load_error_in_python(tmp_path, kind):
    sample, _ = DAMAGE[kind](tmp_path)
    try:
        model = surgeon.load(tmp_path / sample)
    except surgeon.ModelLoadError:
        return
    # What the loader cannot see (wrong weight sizes, an unknown op) onnxruntime refuses.
    with pytest.raises(surgeon.SurgeonError):
        surgeon.run(model, surgeon.make_feeds(model))


# ---------------------------------------------------------------------- random mutations
@st.composite
def mutations(draw):
    sample = draw(st.sampled_from(list(SAMPLE_ARGS)))
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "zero_run"]))
    where = draw(st.floats(0.0, 1.0))
    count = draw(st.integers(1, 6))
    value = draw(st.integers(0, 255))
    command = draw(st.sampled_from([c for c in COMMAND_NAMES if c != "inspect"]))
    return sample, kind, where, count, value, command


def mutate(data: bytes, kind: str, where: float, count: int, value: int) -> bytes:
    buf = bytearray(data)
    at = min(int(where * len(buf)), len(buf) - 1)
    if kind == "truncate":
        return bytes(buf[:at])
    if kind == "flip":
        for i in range(count):
            j = (at + i * 97) % len(buf)
            buf[j] ^= value or 0x5A
        return bytes(buf)
    if kind == "splice":  # a chunk of the file repeated further on
        chunk = buf[at : at + 16 * count]
        return bytes(buf[:at] + chunk + buf[at:])
    buf[at : at + 8 * count] = bytes(len(buf[at : at + 8 * count]))  # zero_run
    return bytes(buf)


@settings(
    max_examples=int(os.environ.get("SURGEON_FUZZ_EXAMPLES", "120")),
    deadline=None,
    # The same examples in every CI run; SURGEON_FUZZ_EXAMPLES=5000 for a long, random hunt.
    derandomize="SURGEON_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # no .hypothesis/ folder in the checkout
)
@given(mutations())
def test_random_byte_mutations_never_crash(case):
    sample, kind, where, count, value, command = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _copy_sample(folder, sample)
        target = model
        if sample == "ext_weights.onnx" and where > 0.5:
            target = folder / "ext_weights.onnx.data"  # damage the weights file instead
        target.write_bytes(mutate(target.read_bytes(), kind, where, count, value))
        out = folder / "out.onnx"
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        lines = command_lines(model, out, sample)
        for name in ("inspect", command):
            result = run_cli(*lines[name])
            event(f"{name}: exit {result.status}")
            check_outcome(result, folder, model, before, out)


@st.composite
def graph_edits(draw):
    """A few random edits of a sample model's graph: rewired inputs (dangling names,
    cycles, type clashes), deleted nodes, renamed outputs, changed attributes and dims."""
    sample = draw(st.sampled_from(list(SAMPLE_ARGS)))
    edits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["rewire", "delete", "rename_output", "attribute", "dim"]),
                st.integers(0, 10**6),
                st.integers(0, 10**6),
                st.integers(-3, 70),
            ),
            min_size=1,
            max_size=3,
        )
    )
    command = draw(st.sampled_from([c for c in COMMAND_NAMES if c != "inspect"]))
    return sample, edits, command


def apply_edits(proto: onnx.ModelProto, edits) -> None:
    g = proto.graph
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    names += [o for n in g.node for o in n.output] + ["nowhere"]
    for kind, a, b, value in edits:
        if not len(g.node):
            return
        node = g.node[a % len(g.node)]
        if kind == "rewire" and len(node.input):
            node.input[b % len(node.input)] = names[b % len(names)]
        elif kind == "delete":
            del g.node[a % len(g.node)]
        elif kind == "rename_output" and len(node.output):
            node.output[0] = names[b % len(names)]
        elif kind == "attribute" and len(node.attribute):
            attr = node.attribute[b % len(node.attribute)]
            if attr.type == onnx.AttributeProto.INT:
                attr.i = value
            elif attr.type == onnx.AttributeProto.INTS and len(attr.ints):
                attr.ints[b % len(attr.ints)] = value
        elif kind == "dim" and len(g.input):
            dims = g.input[a % len(g.input)].type.tensor_type.shape.dim
            if len(dims):
                dims[b % len(dims)].dim_value = max(value, 0)


@settings(
    max_examples=int(os.environ.get("SURGEON_FUZZ_EXAMPLES", "80")),
    deadline=None,
    derandomize="SURGEON_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # no .hypothesis/ folder in the checkout
)
@given(graph_edits())
def test_random_graph_edits_never_crash(case):
    sample, edits, command = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _copy_sample(folder, sample)
        proto = onnx.load(str(model), load_external_data=False)
        apply_edits(proto, edits)
        model.write_bytes(proto.SerializeToString())
        out = folder / "out.onnx"
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        lines = command_lines(model, out, sample)
        for name in ("inspect", command):
            result = run_cli(*lines[name])
            event(f"{name}: exit {result.status}")
            check_outcome(result, folder, model, before, out)


@pytest.mark.parametrize(
    "command", [c for c in COMMAND_NAMES if c not in ("inspect", "diff", "check-dynamic")]
)
def test_a_failed_run_leaves_an_existing_output_untouched(tmp_path, command):
    sample, _ = damage_cycle(tmp_path)
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous result")
    result = run_cli(*command_lines(tmp_path / sample, out, sample)[command])
    assert result.status == 2
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", sample]
