"""Outputs never land on inputs or on each other, and writes are transactions.

Every command checks, before any work, the files it reads (models and their weights files,
feeds, references, custom-op libraries, recipes) against the files it writes (-o and the
weights file -o gets, --save, --html); see surgeon.outputs.FilePlan. A model and its
weights file, and every file of a -o FOLDER/, are replaced as one unit.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

import surgeon
from surgeon import outputs
from surgeon.errors import OutputPathError
from surgeon.loading import load
from surgeon.outputs import plan as plan_module
from surgeon.outputs import writing
from surgeon.saving import save

W = np.arange(8, dtype=np.float32).reshape(2, 4)


def _ext_model(folder: Path, name: str, data: str, text: str | None = None) -> Path:
    """``y = Add(x, w)`` (or ``text``) with ``w`` in the external file ``data``."""
    m = parse(
        text
        or """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2, 4] x) => (y) { y = Add(x, w) }"""
    )
    m.graph.initializer.append(onnx.numpy_helper.from_array(W, "w"))
    path = folder / name
    onnx.save_model(
        m,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=0,
    )
    return path


SECOND = """<ir_version: 8, opset_import: ["" : 17]>
agraph (float[2, 4] y) => (z) { z = Add(y, w) }"""


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() and not p.is_symlink()
        else "link-or-dir"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def no_work(monkeypatch):
    """Any onnxruntime session (the start of the real work) fails the test (exit 3)."""
    import surgeon.runner

    def refuse(*a, **k):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(surgeon.runner.Session, "__init__", refuse)


def _text(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def _refused(result, *fragments):
    assert result.status == 2, (result.status, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in _text(result), result.stderr


BIG = np.arange(1024, dtype=np.float32).reshape(2, 512)  # above EXTERNAL_THRESHOLD


def _big_model() -> surgeon.Model:
    m = parse("""<ir_version: 8, opset_import: ["" : 17]>
    agraph (float[2, 512] x) => (y) { y = Add(x, w) }""")
    m.graph.initializer.append(onnx.numpy_helper.from_array(BIG, "w"))
    return surgeon.Model(m)


# ------------------------------------------------------------------ the reported cases
def test_debug_output_weights_cannot_replace_the_references_weights(tmp_path, no_work):
    model = _ext_model(tmp_path, "a.onnx", "a.onnx.data")
    ref = _ext_model(tmp_path, "ref.onnx", "out.onnx.data")  # saved as out.onnx, renamed
    before = _hashes(tmp_path)
    result = run_cli(
        "debug", model, "--ref", ref, "-o", tmp_path / "out.onnx", "--external-data", "always"
    )
    _refused(result, "out.onnx.data", "reference")
    assert _hashes(tmp_path) == before
    assert load(ref)  # still loads


def test_merge_output_weights_cannot_replace_the_second_models_weights(tmp_path, no_work):
    first = _ext_model(tmp_path, "first.onnx", "first.onnx.data")
    second = _ext_model(tmp_path, "second.onnx", "out.onnx.data", SECOND)
    before = _hashes(tmp_path)
    result = run_cli(
        "merge", first, second, "-o", tmp_path / "out.onnx", "--external-data", "always"
    )
    _refused(result, "out.onnx.data", "second model")
    assert _hashes(tmp_path) == before


def test_auto_external_data_protects_the_weights_file_it_could_write(tmp_path, no_work):
    first = _ext_model(tmp_path, "first.onnx", "first.onnx.data")
    second = _ext_model(tmp_path, "second.onnx", "out.onnx.data", SECOND)
    result = run_cli("merge", first, second, "-o", tmp_path / "out.onnx")
    _refused(result, "--external-data auto")
    # and --external-data never is the way out: nothing can go to out.onnx.data then
    result = run_cli(
        "merge", first, second, "-o", tmp_path / "out.onnx", "--external-data", "never"
    )
    assert result.status == 3 and "work started" in result.stderr  # passed the check


def test_save_cannot_write_over_the_new_models_weights(tmp_path, no_work):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    result = run_cli(
        "debug",
        model,
        "-o",
        tmp_path / "out.onnx",
        "--external-data",
        "always",
        "--save",
        tmp_path / "out.onnx.data",
    )
    _refused(result, "both write", "--save")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


@pytest.mark.parametrize("flag", ["--save", "--html"])
@pytest.mark.parametrize("victim", ["--feeds", "--custom-op-library"])
def test_side_outputs_cannot_replace_feeds_or_libraries(tmp_path, no_work, flag, victim):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    if victim == "--feeds":  # valid feeds: only the refusal stops the command
        target = tmp_path / "feeds.npz"
        np.savez(target, x=W)
    else:
        target = tmp_path / "libcustom.so"
        target.write_bytes(b"precious")
    before = target.read_bytes()
    result = run_cli("debug", model, victim, target, flag, target)
    _refused(result, target.name)
    assert target.read_bytes() == before


def test_extract_output_cannot_replace_its_feeds(tmp_path, no_work):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=W)
    before = feeds.read_bytes()
    result = run_cli(
        "extract", model, "--inputs", "x", "--outputs", "y", "--feeds", feeds, "-o", feeds
    )
    _refused(result, "--feeds")
    assert feeds.read_bytes() == before


def test_inplace_hint_only_where_inplace_works(tmp_path, no_work):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    before = _hashes(tmp_path)
    for extra in ([], ["--inplace"]):
        result = run_cli("debug", model, "--save", model, *extra)
        # --inplace only says how -o is written: without -o it is refused as such
        _refused(result, "no -o was given" if extra else "refusing to overwrite")
        assert "to replace the input model on purpose" not in _text(result)
    # where the hint is given, following it works
    result = run_cli("rename", model, "--map", "y=z", "-o", model)
    _refused(result, "to replace the input model on purpose")
    assert _hashes(tmp_path) == before


def test_inplace_replaces_the_model_and_its_weights_together(tmp_path):
    model = save(_big_model(), tmp_path / "m.onnx", external_data=True)
    result = run_cli(
        "rename", model, "--map", "y=z", "-o", model, "--inplace", "--external-data", "always"
    )
    assert result.status == 0, result.stderr
    again = load(model)
    assert again.output_names == ["z"] and again.external_data_files == ["m.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


@pytest.mark.parametrize("target", ["m.onnx.data", "feeds.npz"])
def test_inplace_lets_only_the_model_file_be_replaced(tmp_path, no_work, target):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    np.savez(tmp_path / "feeds.npz", x=W)
    before = _hashes(tmp_path)
    out = tmp_path / target
    args = ["rename", model, "--map", "y=z", "-o", out, "--inplace"]
    if target == "feeds.npz":  # the feeds of the command, not the model it edits
        args += ["--feeds", out]
    _refused(run_cli(*args))
    assert _hashes(tmp_path) == before


def test_api_save_refuses_data_name_equal_to_the_model(tmp_path):
    m = load(_ext_model(tmp_path, "m.onnx", "m.onnx.data"))
    with pytest.raises(OutputPathError, match="both write"):
        surgeon.save(m, tmp_path / "o.onnx", external_data=True, data_name="o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_api_save_refuses_the_models_own_weights_as_output(tmp_path):
    m = load(_ext_model(tmp_path, "m.onnx", "m.onnx.data"))
    before = _hashes(tmp_path)
    for kwargs in ({}, {"inplace": True}):
        with pytest.raises(OutputPathError, match="refusing to overwrite"):
            save(m, tmp_path / "m.onnx.data", **kwargs)
    assert _hashes(tmp_path) == before


def test_same_file_through_symlinks_hard_links_and_dotdot(tmp_path):
    (tmp_path / "d").mkdir()
    a = tmp_path / "a.onnx"
    a.write_bytes(b"x")
    os.symlink(a, tmp_path / "s.onnx")
    os.link(a, tmp_path / "h.onnx")
    os.symlink(tmp_path / "d", tmp_path / "dl")
    assert outputs.same_file(a, tmp_path / "s.onnx")
    assert outputs.same_file(a, tmp_path / "h.onnx")
    assert outputs.same_file(a, tmp_path / "d" / ".." / "a.onnx")
    # not yet existing: through a symlinked folder
    assert outputs.same_file(tmp_path / "d" / "new.onnx", tmp_path / "dl" / "new.onnx")
    assert not outputs.same_file(a, tmp_path / "b.onnx")


def _spellings(root: Path) -> list[Path]:
    """Many names for few files: a, its hard link, a symlink to it, b, names that do not
    exist yet, each also through a symlinked folder and through `..`."""
    if not (root / "d").exists():
        (root / "d").mkdir()
        (root / "d" / "a").write_bytes(b"a")
        (root / "d" / "b").write_bytes(b"b")
        os.link(root / "d" / "a", root / "d" / "hard-a")
        os.symlink(root / "d" / "a", root / "d" / "sym-a")
        os.symlink("a", root / "d" / "rel-a")
        os.symlink(root / "d", root / "dl")
        (root / "e").mkdir()
    names = ["a", "hard-a", "sym-a", "rel-a", "b", "new", "new2"]
    folders = [root / "d", root / "dl", root / "e" / ".." / "d", root / "dl" / ".." / "d"]
    return [f / n for f in folders for n in names]


def _reference_same(p: Path, q: Path) -> bool:
    """Independent answer: samefile for existing files; for new names, the same name in
    the same physical folder (os.stat of the folders)."""
    if p.exists() and q.exists():
        return os.path.samefile(p, q)
    if p.exists() != q.exists():
        return False
    return p.name == q.name and os.path.samefile(p.parent, q.parent)


@settings(max_examples=60, deadline=None)
@given(i=st.integers(0, 27), j=st.integers(0, 27))
def test_same_file_agrees_with_samefile(tmp_path_factory, i, j):
    root = tmp_path_factory.getbasetemp() / "spellings"
    root.mkdir(exist_ok=True)
    paths = _spellings(root)
    p, q = paths[i], paths[j]
    assert outputs.same_file(p, q) == _reference_same(p, q), (p, q)
    plan = outputs.FilePlan()
    plan.reads(p, "the input")
    plan.writes(q, "-o")
    assert bool(plan.clashes()) == _reference_same(p, q)


# ------------------------------------------------------------------ transactions
def test_failed_model_rename_rolls_back_the_weights_file(tmp_path, monkeypatch):
    save(_big_model(), tmp_path / "out.onnx", external_data=True)
    before = _hashes(tmp_path)
    assert (tmp_path / "out.onnx.data").stat().st_size >= BIG.nbytes
    new = _big_model()
    new.proto.graph.initializer[0].raw_data = (BIG + 1).tobytes()
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == "out.onnx":  # the second rename: the model file
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(writing.os, "replace", replace)
    with pytest.raises(OutputPathError, match="out.onnx: Input/output error"):
        save(new, tmp_path / "out.onnx", external_data=True)
    monkeypatch.undo()
    assert _hashes(tmp_path) == before  # the weights file is the old one again, no temps
    weights = load(tmp_path / "out.onnx").proto.graph.initializer[0]
    assert np.array_equal(onnx.numpy_helper.to_array(weights), BIG)
    save(new, tmp_path / "out.onnx", external_data=True)  # and without the fault: replaced
    weights = load(tmp_path / "out.onnx").proto.graph.initializer[0]
    assert np.array_equal(onnx.numpy_helper.to_array(weights), BIG + 1)


@pytest.mark.parametrize("fail_at", ["write", "rename"])
def test_folder_output_is_all_or_nothing(tmp_path, samples, monkeypatch, fail_at):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "before.onnx").write_bytes(b"old before")
    (parts / "after.onnx").write_bytes(b"old after")
    real_replace, real_fsync = os.replace, os.fsync
    calls = {"fsync": 0}

    def replace(src, dst, *a, **k):
        if Path(dst).name == "after.onnx":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    def fsync(fd):
        calls["fsync"] += 1
        if calls["fsync"] == 2:  # the second file: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    if fail_at == "rename":
        monkeypatch.setattr(writing.os, "replace", replace)
    else:
        monkeypatch.setattr(writing.os, "fsync", fsync)
    result = run_cli(
        "run",
        "split_model",
        samples / "tiny_yolo.onnx",
        "--param",
        "at=backbone/act2_out",
        "-o",
        parts,
        "--inplace",  # harmless: no input is in parts/
    )
    _refused(result, "No space left on device", "nothing was written")
    assert (parts / "before.onnx").read_bytes() == b"old before"
    assert (parts / "after.onnx").read_bytes() == b"old after"
    assert sorted(p.name for p in parts.iterdir()) == ["after.onnx", "before.onnx"]


def test_folder_output_made_for_the_results_is_removed_on_failure(tmp_path, samples, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writing.os, "fsync", fsync)
    result = run_cli(
        "run",
        "split_model",
        samples / "tiny_yolo.onnx",
        "--param",
        "at=backbone/act2_out",
        "-o",
        tmp_path / "new" / "parts",
    )
    _refused(result, "No space left")
    assert not (tmp_path / "new").exists()


def test_debug_outputs_are_all_or_nothing(tmp_path, monkeypatch):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # -o, then --save, then --html: the disk is full at the third
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(writing.os, "fsync", fsync)
    outs = ["-o", tmp_path / "t.onnx", "--save", tmp_path / "t.npz", "--html", tmp_path / "r.html"]
    result = run_cli("debug", model, *outs)
    _refused(result, "r.html", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    monkeypatch.undo()
    assert run_cli("debug", model, *outs).status == 0
    assert {"t.onnx", "t.npz", "r.html"} <= {p.name for p in tmp_path.iterdir()}


def test_transaction_puts_back_every_file_when_a_late_rename_fails(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    before = _hashes(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == "c" and str(src).endswith(".tmp"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(writing.os, "replace", replace)
    with pytest.raises(OutputPathError, match="c: Input/output error"):
        with outputs.transaction():
            outputs.write_files([(tmp_path / "a", lambda fh: fh.write(b"new a"))])
            outputs.write_files([(tmp_path / "new", lambda fh: fh.write(b"new"))])
            outputs.write_files([(tmp_path / "b", lambda fh: fh.write(b"new b"))])
            outputs.write_files([(tmp_path / "c", lambda fh: fh.write(b"new c"))])
    assert _hashes(tmp_path) == before


def test_unwritable_output_folder_is_found_before_the_work(tmp_path, no_work, monkeypatch):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = plan_module.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):  # as root, chmod cannot make a folder read-only
        if Path(dir) == ro:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(plan_module.tempfile, "mkstemp", mkstemp)
    for argv in (
        ["rename", model, "--map", "y=z", "-o", ro / "out.onnx"],
        ["debug", model, "--html", ro / "r.html"],
        ["run", "split_model", model, "--param", "at=y", "-o", ro / "parts"],
    ):
        _refused(run_cli(*argv), "Read-only file system", "/ro")


def test_name_too_long_is_found_before_the_work(tmp_path, no_work):
    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    out = tmp_path / ("n" * 250 + ".onnx")  # 255 bytes: fine; its .data (260) is not
    _refused(
        run_cli("rename", model, "--map", "y=z", "-o", out, "--external-data", "always"),
        "over this file system's",
    )


def test_longest_name_is_written_despite_the_temp_suffix(tmp_path):
    m = load(_ext_model(tmp_path, "m.onnx", "m.onnx.data"))
    out = tmp_path / ("n" * 250 + ".onnx")
    assert save(m, out) == out and load(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", "m.onnx.data", out.name])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs setrlimit in a child process")
def test_file_size_limit_is_exit_2_with_the_reason(tmp_path):
    """A real write failure from the kernel (RLIMIT_FSIZE; a tmpfs would need root)."""
    import resource
    import signal
    import subprocess
    import sys

    model = _ext_model(tmp_path, "m.onnx", "m.onnx.data")
    (tmp_path / "out.onnx").write_bytes(b"old")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    proc = subprocess.run(
        [sys.executable, "-m", "surgeon", "rename", str(model), "--map", "y=z", "-o", "out.onnx"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(surgeon.__file__).parent.parent)},
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "File too large" in proc.stderr and "out.onnx" in proc.stderr
    assert (tmp_path / "out.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "out.onnx"]


# ------------------------------------------------------------------ the stress test
def _stress_setup(folder: Path) -> dict[str, Path]:
    paths = {
        "model": _ext_model(folder, "m.onnx", "m.onnx.data"),
        "second": _ext_model(folder, "g.onnx", "g.onnx.data", SECOND),
        "ref": _ext_model(folder, "ref.onnx", "ref.onnx.data"),
    }
    paths["feeds"] = folder / "feeds.npz"
    np.savez(paths["feeds"], x=W)
    paths["lib"] = folder / "libcustom.so"
    paths["lib"].write_bytes(b"\x7fELF not really")
    paths["recipe"] = folder / "my_recipe.py"
    paths["recipe"].write_text(
        '"""Rename."""\nimport surgeon\n\n\ndef recipe(models):\n'
        '    return surgeon.rename(models[0], {"y": "z"})\n'
    )
    for key in ("model", "second", "ref"):
        paths[key + ".data"] = paths[key].with_name(paths[key].name + ".data")
    for key, p in list(paths.items()):  # every file also through a symlink
        os.symlink(p, folder / f"link-{p.name}")
        paths["link:" + key] = folder / f"link-{p.name}"
    return paths


# command -> (argv before the outputs, {output flag: its default path}, inputs -o may replace)
STRESS = {
    "debug": (
        ["debug", "{model}", "--ref", "{ref}", "--feeds", "{feeds}"],
        ["-o", "--save", "--html"],
        {"model"},
    ),
    "extract": (
        ["extract", "{model}", "--inputs", "x", "--outputs", "y", "--feeds", "{feeds}"],
        ["-o"],
        {"model"},
    ),
    "rename": (["rename", "{model}", "--map", "y=z", "--feeds", "{feeds}"], ["-o"], {"model"}),
    "reshape-io": (["reshape-io", "{model}", "--dims", "x:Nx4"], ["-o"], {"model"}),
    "merge": (["merge", "{model}", "{second}", "--feeds", "{feeds}"], ["-o"], {"model", "second"}),
    "run": (["run", "{recipe}", "{model}"], ["-o"], {"model"}),
}
OUTPUT_NAMES = {"-o": "out.onnx", "--save": "taps.npz", "--html": "report.html"}


def _stress_cases():
    for command, (_, flags, _) in STRESS.items():
        for flag in flags:
            for inplace in (False, True):
                yield pytest.param(command, flag, inplace, id=f"{command}{flag}-{inplace}")


@pytest.mark.parametrize(("command", "flag", "inplace"), list(_stress_cases()))
def test_every_output_option_at_every_input_and_output_is_refused(
    tmp_path, no_work, command, flag, inplace
):
    """Point ``flag`` at every file the command reads and at every other output (and
    their weights files, and each through a symlink): always exit 2 before any work,
    every file unchanged, nothing left behind."""
    paths = _stress_setup(tmp_path)
    head, flags, replaceable = STRESS[command]
    runtime = [] if command == "run" else ["--custom-op-library", str(paths["lib"])]
    argv = [a.format(**{k: v for k, v in paths.items() if ":" not in k}) for a in head]
    used = {k for k in paths if any(str(paths[k]) == a for a in argv)} | (
        {"lib"} if runtime else set()
    )
    used |= {k + ".data" for k in used if k + ".data" in paths}
    targets = {k: paths[k] for k in used} | {"link:" + k: paths["link:" + k] for k in used}
    others = {f: tmp_path / OUTPUT_NAMES[f] for f in flags if f != flag}
    if "-o" in flags and flag != "-o":  # the weights file -o gets
        targets["-o data"] = tmp_path / "out.onnx.data"
    targets |= {f"output {f}": p for f, p in others.items()}
    before = _hashes(tmp_path)
    tried = 0
    for name, target in targets.items():
        if inplace and flag == "-o" and name.split(":")[-1] in replaceable:
            continue  # the one write --inplace allows
        outs = {**others, flag: target}
        line = argv + runtime + [x for f, p in outs.items() for x in (f, str(p))]
        line += ["--external-data", "always"] if "-o" in outs else []
        line += ["--inplace"] if inplace else []
        result = run_cli(*line)
        assert result.status == 2, (name, line, result.stderr)
        text = _text(result)
        assert any(f in text for f in ("refusing", "both write", "is an existing file")), (
            name,
            result.stderr,
        )
        tried += 1
    assert tried >= 4
    assert _hashes(tmp_path) == before
