"""Running models with onnxruntime on the CPU.

This is the only module that imports onnxruntime, and it does so lazily, so that
``surgeon --help`` and the pure graph edits never pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from surgeon import fastops_library as fastops
from surgeon.annotations import checked_init
from surgeon.defaults import DEFAULT_OPTIMIZATION
from surgeon.errors import RuntimeFailure, SurgeonError, UsageError, unknown_name
from surgeon.external import is_external
from surgeon.model import PROTO_LIMIT, Model, TensorInfo, tensor_nbytes
from surgeon.protos import declared_nbytes, iter_tensors
from surgeon.saving import save

# Re-exported: callers take it from here (read every external tensor into memory).
from surgeon.weights import (
    inline_external_data,  # noqa: F401
    session_folder,
)

CREATE_LOCK = threading.Lock()
OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
# Models with more weights in memory than this reach onnxruntime as a temporary file with
# external data rather than as serialised bytes (weights left on disk by surgeon.load do
# not count: onnxruntime maps those from their own files): serialising costs two transient copies of the
# weights, and a session built from bytes keeps two more, against one from a file.
# (Above protobuf's 2 GB limit a file is the only way.)
FILE_THRESHOLD = min(256 * 2**20, PROTO_LIMIT - 16 * 2**20)


@checked_init  # field types checked on construction: a UsageError, never a TypeError
@dataclass(frozen=True)
class RunOptions:
    """How onnxruntime runs a model.

    Attributes:
        optimization: Graph optimisation level: disabled, basic, extended or all.
        custom_op_libraries: Shared libraries with custom operators; loaded only when
            given explicitly.
        threads: Intra-op threads (0 lets onnxruntime decide).
        execution_order: ``default``, or ``priority`` (onnxruntime's priority-based order).
        prepacking: Let onnxruntime repack constant weights for its GEMM kernels (its
            default). False computes a MatMul the same way whether its weight is an
            initializer or a tensor computed at run time (a prepacked weight takes
            another summation path, which moves the last bits).
    """

    optimization: str = DEFAULT_OPTIMIZATION
    custom_op_libraries: tuple[str, ...] = field(default_factory=tuple)
    threads: int = 0
    execution_order: str = "default"  # or "priority": onnxruntime's priority-based order
    # False: each tensor is allocated from the system and freed when it dies, instead of
    # from onnxruntime's arena, which grows by doubling and keeps its peak (debug's
    # statistics run: a float64 copy per tapped tensor, one at a time).
    memory_arena: bool = True
    prepacking: bool = True
    # False: idle intra-op threads sleep instead of spinning. Same work split, same
    # numbers; on a machine busy with other processes, spinning threads steal the cores
    # the running kernel needs (debug's statistics run: 0.6 against 1.1-1.3 s measured).
    spinning: bool = True

    def __post_init__(self):
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise SurgeonError(
                f"unknown optimisation level `{self.optimization}`; use one of {', '.join(OPTIMIZATION_LEVELS)}"
            )


def ort_module():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors reach the user through our messages
    return ort


def session_options(options: RunOptions):
    ort = ort_module()
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.optimization]
    # 4 (fatal only): a failing run already reaches the user through the exception;
    # at 3 onnxruntime also printed it to the process's stderr, twice over for --json.
    so.log_severity_level = 4
    if options.threads:
        so.intra_op_num_threads = options.threads
    if options.execution_order == "priority":
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    so.enable_cpu_mem_arena = options.memory_arena
    if not options.prepacking:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if not options.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for lib in options.custom_op_libraries:
        if not Path(lib).is_file():
            raise SurgeonError(f"custom op library {lib} does not exist")
        try:
            # Absolute: dlopen does not search the current folder for a bare file name.
            so.register_custom_ops_library(str(Path(lib).resolve()))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types (Fail, RuntimeException...)
            raise SurgeonError(f"cannot load custom op library {lib}: {first_line(e)}") from None
    return so


def _among(library: str, libraries: Iterable[str]) -> bool:
    """Whether ``library`` is one of ``libraries`` (the same file: registered once, as
    onnxruntime refuses a domain registered twice)."""
    for other in libraries:
        with contextlib.suppress(OSError):
            if os.path.samefile(library, other):
                return True
    return False


def first_line(e: Exception) -> str:
    text = str(e).strip()
    # onnxruntime prefixes messages with "[ONNXRuntimeError] : 1 : FAIL : "
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    return text.splitlines()[0] if text else type(e).__name__


def custom_domains(model: Model) -> list[str]:
    from surgeon.model import iter_graphs

    known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}
    known.add(fastops.DOMAIN)
    found = []
    for g in iter_graphs(model.proto.graph):
        for n in g.node:
            if n.domain not in known and n.domain not in found:
                found.append(n.domain)
    return found


def through_file(model: Model) -> bool:
    """Whether ``model`` reaches onnxruntime as a scratch file (see FILE_THRESHOLD)."""
    return in_memory_bytes(model) > FILE_THRESHOLD


def in_memory_bytes(model: Model) -> int:
    """Weight bytes ``model`` holds in memory (those left in external files not counted).

    Sized from each tensor's shape and type where they say it (reading ``raw_data`` to
    measure it copies the bytes: 13 MB per session on a YOLOv8n-size model); a tensor
    whose bytes disagree with its shape is refused by onnxruntime all the same."""
    total = 0
    for t in iter_tensors(model.proto):
        if not is_external(t):
            declared = declared_nbytes(t)
            total += tensor_nbytes(t) if declared is None else declared
    return total


class Session:
    """An onnxruntime session over a Model, optionally exposing intermediate tensors."""

    def __init__(
        self,
        model: Model,
        *,
        extra_outputs: Iterable[str] = (),
        options: RunOptions | None = None,
        initializers: Mapping[str, np.ndarray] | BorrowedWeights | None = None,
    ):
        """
        Args:
            initializers: Weights handed to onnxruntime as arrays, by name, for a model
                whose proto leaves them out: they are neither copied into that proto nor
                serialised and parsed again. Arrays given as a mapping are kept alive
                with the session, as onnxruntime's API asks. :class:`BorrowedWeights`
                are read from their model when the session is built and, where
                onnxruntime copies them (probed once per process; 1.32 does), dropped
                right after, so no Python copy stays beside onnxruntime's.
        """
        self.model = model
        self.options = options or RunOptions()
        graph_outputs = set(model.output_names)
        extra = [n for n in dict.fromkeys(extra_outputs) if n not in graph_outputs]
        if extra:
            names = set(model.tensor_names())
            for n in extra:
                if n not in names:
                    raise unknown_name("tensor", n, names, model.name, model_path=model.path)
        self.output_names = list(model.output_names) + extra
        ort = ort_module()
        so = session_options(self.options)
        library = fastops.library()
        if (
            library
            and any(o.domain == fastops.DOMAIN for o in model.proto.opset_import)
            and not _among(library, self.options.custom_op_libraries)
        ):
            # surgeon's own measurement nodes (placed where fastops.available())
            try:
                so.register_custom_ops_library(library)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                raise SurgeonError(
                    f"cannot load surgeon's kernels {library}: {first_line(e)}"
                ) from None
        # External weights stay where they are: onnxruntime gets the skeleton and the
        # folder to resolve its (checked) locations in, and maps the files itself.
        data_folder = session_folder(model)
        # Every argument is checked before the caller's proto is touched (below).
        lent = isinstance(initializers, BorrowedWeights)
        if not (lent or initializers is None or isinstance(initializers, Mapping)):
            raise UsageError(
                "initializers: give a mapping of names to numpy arrays or BorrowedWeights, "
                f"not {type(initializers).__name__}"
            )
        borrowed = initializers.arrays() if lent else dict(initializers or {})
        _check_borrowed(borrowed, model)
        graph_outputs = model.proto.graph.output
        # Untyped extra outputs are fine: onnxruntime infers their type. They are added
        # to the shared proto only for serialisation and removed right after, as are the
        # placeholders of the borrowed initializers.
        for n in extra:
            graph_outputs.add(name=n)
        through = through_file(model)
        # Kept alive as long as the session (or its creation, below).
        self._borrowed = [] if through else _borrow(so, borrowed)
        graph_inits = model.proto.graph.initializer
        for name, array in borrowed.items():
            # Through a file, the weights go into the scratch copy like any other.
            graph_inits.append(
                onnx.numpy_helper.from_array(array, name) if through else _placeholder(name, array)
            )
        # The scratch folder is a context manager around both the save and the session
        # creation, so a signal (raised as an exception by the CLI) removes it at once.
        with contextlib.ExitStack() as scratch:
            try:
                if through:
                    folder = scratch.enter_context(
                        tempfile.TemporaryDirectory(prefix="surgeon-run-")
                    )
                    path = Path(folder) / "model.onnx"
                    # durable=False: a scratch copy deleted right after needs no fsync.
                    # Its external tensors are streamed from their files into the copy.
                    save(model.with_proto(model.proto), path, external_data=True, durable=False)
                    source = str(path)
                else:
                    source = model.proto.SerializeToString()
                    if data_folder is not None:
                        so.add_session_config_entry(
                            "session.model_external_initializers_file_folder_path", data_folder
                        )
            finally:
                if extra:
                    del graph_outputs[len(graph_outputs) - len(extra) :]
                if borrowed:
                    del graph_inits[len(graph_inits) - len(borrowed) :]
            try:
                # onnxruntime prints "EP Error ... Falling back" to stdout on some failures
                # (then retries on the same CPU provider): keep stdout for our output
                # (--json). The redirect is process-wide, so session creations take turns
                # (a run in another thread may overlap; it prints nothing).
                with CREATE_LOCK, contextlib.redirect_stdout(io.StringIO()):
                    self._session = ort.InferenceSession(
                        source, so, providers=["CPUExecutionProvider"]
                    )
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a model it refuses
                raise self._failure("load", e) from None
        if lent and _onnxruntime_copies_initializers():
            # onnxruntime holds its own copy now: ours would only add to the peak of the
            # run (13 MB on a YOLOv8n-size model).
            self._borrowed = []
            borrowed.clear()
        self.input_names = [i.name for i in self._session.get_inputs()]
        self._raw_outputs = {
            o.name for o in self._session.get_outputs() if _ort_type_name(o.type) in _RAW_TYPES
        }

    def output_types(self) -> dict[str, TensorInfo]:
        """How onnxruntime typed each output of this session (extra outputs included)
        when it built it: no run needed.

        The dtype is numpy's name (``"float32"``, ``"str"`` for strings, ``"bfloat16"``
        ...), None for a type that is not a tensor (a sequence, a map). Each dim is an
        int, a symbol, or None when onnxruntime does not know it. onnxruntime reports
        the shape ``[]`` both for a scalar and for an unknown rank, so ``[]`` reads as
        an unknown shape (None): a scalar declared from it could be a wrong rank.
        """
        types = {}
        for out in self._session.get_outputs():
            dtype = _ORT_DTYPES.get(_ort_type_name(out.type))
            shape = out.shape if isinstance(out.shape, list) and out.shape else None
            if shape is not None:
                shape = tuple(
                    d if isinstance(d, str) or (isinstance(d, int) and d >= 0) else None
                    for d in shape
                )
            types[out.name] = TensorInfo(out.name, dtype, shape)
        return types

    def _failure(self, what: str, e: Exception) -> RuntimeFailure:
        msg = first_line(e)
        hint = None
        domains = custom_domains(self.model)
        if domains and not self.options.custom_op_libraries:
            hint = (
                f"The model uses custom operator domain(s) {', '.join(domains)}; onnxruntime can only run it "
                "with the library that implements them: give it in RunOptions.custom_op_libraries "
                "(--custom-op-library lib.so on the command line)."
            )
        verb = "load" if what == "load" else "run"
        return RuntimeFailure(f"onnxruntime could not {verb} {self.model.name}: {msg}", hint=hint)

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Iterable[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run on ``feeds`` and return the named outputs (all by default)."""
        names = list(outputs) if outputs is not None else self.output_names
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise SurgeonError(
                f"no value for input(s) {', '.join(f'`{m}`' for m in missing)} of {self.model.name}"
            )
        accepted = set(self.input_names)
        feed = {k: v for k, v in feeds.items() if k in accepted}
        raw = any(n in self._raw_outputs for n in names) or any(
            isinstance(v, np.ndarray) and v.dtype.name in _ML_TO_ONNX for v in feed.values()
        )
        try:
            if raw and all(isinstance(v, np.ndarray) for v in feed.values()):
                # bfloat16, float8, int4 ...: numpy cannot pass them through onnxruntime's
                # Python API, OrtValues built from their raw bytes can.
                ort_feed = {k: _to_ortvalue(v) for k, v in feed.items()}
                values = [
                    _from_ortvalue(v) for v in self._session.run_with_ort_values(names, ort_feed)
                ]
            else:
                values = self._session.run(names, feed)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a failed run
            raise self._failure("run", e) from None
        return dict(zip(names, values, strict=True))


# Element types whose numpy arrays onnxruntime takes as they are (no ml_dtypes, no strings).
_BORROWABLE = frozenset(
    "float32 float64 float16 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool".split()
)
# Smaller tensors stay in the serialised model: a placeholder and an OrtValue cost more.
BORROW_FROM = 1024


def _borrowable(t: onnx.TensorProto) -> bool:
    """An initializer held in memory that onnxruntime can take as an array: at least
    ``BORROW_FROM`` bytes, of a plain numpy type."""
    if t.data_location == onnx.TensorProto.EXTERNAL or t.ByteSize() < BORROW_FROM:
        return False
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name in _BORROWABLE
    except (KeyError, ValueError):  # an undefined or unknown element type
        return False


def borrowable_weights(model: Model) -> dict[str, np.ndarray]:
    """The main graph's in-memory initializers that onnxruntime can take as arrays
    (at least ``BORROW_FROM`` bytes, of a plain numpy type), each read into one array.

    A model built without them (e.g. the statistics model of ``debug``) runs with
    ``Session(..., initializers=...)``: its proto then holds no copy of the weights and
    its serialised bytes none either.
    """
    return BorrowedWeights(model).arrays()


def _lendable(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Borrowable initializers that are neither graph inputs (an overridable default) nor
    graph outputs (a model built without those would lose an input's default or an
    output's producer), and that a node of the main graph reads: onnxruntime drops an
    unused initializer when it loads the model, and then refuses the array given for it
    (an exporter's leftover weight made debug --ref fail). The others stay in the proto."""
    graph = proto.graph
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    read = {name for node in graph.node for name in node.input}
    return [t for t in graph.initializer if t.name in read - io and _borrowable(t)]


class BorrowedWeights:
    """The weights :func:`borrowable_weights` would read from ``model``, read only when
    a Session is built with them (``Session(..., initializers=BorrowedWeights(m))``),
    so the caller holds no copy in between.

    ``renamed`` adds other models' weights under new names (a proto and its renaming
    function each), for a model that holds several (debug's merged comparison model).

    Attributes:
        names: The initializers' names (a model built without them names them as
            inputs of its nodes).
    """

    def __init__(
        self,
        model: Model,
        renamed: Sequence[tuple[onnx.ModelProto, Callable[[str], str]]] = (),
    ):
        self.model = model
        self._sources = [(model.proto, None), *renamed]
        self.names = frozenset(name for name, _ in self._lent())

    def _lent(self) -> list[tuple[str, onnx.TensorProto]]:
        return [
            (rename(t.name) if rename else t.name, t)
            for proto, rename in self._sources
            for t in _lendable(proto)
        ]

    def arrays(self) -> dict[str, np.ndarray]:
        from onnx import numpy_helper

        return {name: np.ascontiguousarray(numpy_helper.to_array(t)) for name, t in self._lent()}


@functools.cache
def _onnxruntime_copies_initializers() -> bool:
    """Whether onnxruntime copies an initializer given as an OrtValue when it builds a
    session (1.32 does). Probed on a 4 MiB weight, as large as the ones debug lends: a
    write to the array after the session is built must not show in a run. Where it
    would, the arrays are kept as long as the session."""
    from onnx import helper

    array = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["w", "i"], ["y"], axis=0)],
        "probe",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [_placeholder("w", array)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    ort = ort_module()
    so = session_options(RunOptions(optimization="disabled"))
    values = _borrow(so, {"w": array})
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        index = {"i": np.array([7], np.int64)}
        before = session.run(None, index)[0].copy()
        array += 1
        after = session.run(None, index)[0]
    except Exception:  # noqa: BLE001 - any failure: assume nothing, keep the arrays
        return False
    del values
    return bool(np.array_equal(before, after))


def _placeholder(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer with no bytes, marked external: onnxruntime takes its value from
    the OrtValue given under the same name (SessionOptions.add_external_initializers)
    and never opens the placeholder location."""
    t = onnx.TensorProto(name=name, data_type=onnx_dtype_of(array), dims=array.shape)
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="surgeon-borrowed-initializer")
    return t


def _check_borrowed(arrays: Mapping[str, np.ndarray], model: Model) -> None:
    """
    Raises:
        UsageError: A name that is not a string or that the model already holds, or a
            value that is not a numpy array of a type onnxruntime takes as it is.
    """
    if not arrays:
        return
    held = {t.name for t in model.proto.graph.initializer}
    for name, array in arrays.items():
        if not isinstance(name, str) or name in held:
            raise UsageError(
                f"initializers: {name!r} is not a name {model.name} leaves out (each "
                "borrowed weight must be missing from the model's initializers)"
            )
        if not isinstance(array, np.ndarray) or array.dtype.name not in _BORROWABLE:
            got = array.dtype.name if isinstance(array, np.ndarray) else type(array).__name__
            raise UsageError(
                f"initializers: `{name}` must be a numpy array of one of "
                f"{', '.join(sorted(_BORROWABLE))}, not {got}"
            )
        if not array.flags.c_contiguous:
            # onnxruntime reads the buffer as C-ordered: a view (a transpose, a slice
            # with steps) would be read as other values, or refused with its own error.
            raise UsageError(
                f"initializers: `{name}` is not C-contiguous (a transposed or strided "
                "view); pass np.ascontiguousarray(...) of it"
            )


def _borrow(so, arrays: Mapping[str, np.ndarray]) -> list:
    """Register ``arrays`` with the session options as external initializers; returns the
    OrtValues, kept as long as the session (onnxruntime 1.32 copies them when it builds
    the session, but its API does not promise to)."""
    if not arrays:
        return []
    ort = ort_module()
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
    so.add_external_initializers(list(arrays), values)
    return values


def run(
    model: Model,
    feeds: Mapping[str, np.ndarray],
    *,
    outputs: Iterable[str] | None = None,
    options: RunOptions | None = None,
    initializers: BorrowedWeights | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` once and return tensors by name.

    Args:
        outputs: Tensor names to return; intermediate tensors are exposed as needed.
            Defaults to the model's outputs.
        initializers: Weights the model leaves out, handed to onnxruntime as arrays
            (see :class:`Session`).
    """
    wanted = list(outputs) if outputs is not None else model.output_names
    if not wanted:  # onnxruntime would return every output for an empty list
        raise UsageError(
            "`outputs` is empty: name a tensor, or leave it None for the model's outputs"
        )
    session = Session(model, extra_outputs=wanted, options=options, initializers=initializers)
    return session.run(feeds, wanted)


# Element types numpy cannot hand to (or take from) onnxruntime's Python API; ml_dtypes
# arrays hold them, one element per byte. onnxruntime's type name -> (ml_dtypes name, onnx
# TensorProto name, bits per element in onnxruntime's packed layout).
_RAW_TYPES = {
    "bfloat16": ("bfloat16", "BFLOAT16", 16),
    "float8e4m3fn": ("float8_e4m3fn", "FLOAT8E4M3FN", 8),
    "float8e4m3fnuz": ("float8_e4m3fnuz", "FLOAT8E4M3FNUZ", 8),
    "float8e5m2": ("float8_e5m2", "FLOAT8E5M2", 8),
    "float8e5m2fnuz": ("float8_e5m2fnuz", "FLOAT8E5M2FNUZ", 8),
    "float8e8m0": ("float8_e8m0fnu", "FLOAT8E8M0", 8),
    "int4": ("int4", "INT4", 4),
    "uint4": ("uint4", "UINT4", 4),
    "float4e2m1": ("float4_e2m1fn", "FLOAT4E2M1", 4),
    "int2": ("int2", "INT2", 2),
    "uint2": ("uint2", "UINT2", 2),
}
_ML_TO_ONNX = {ml: name for name, (ml, _, _) in _RAW_TYPES.items()}
# onnxruntime's element type name -> numpy's.
_ORT_DTYPES = {
    "float": "float32",
    "float16": "float16",
    "double": "float64",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "string": "str",
    # The only one of _RAW_TYPES listed: the others (float8, int4, ...) stay untyped, so
    # callers learn them from a run rather than write a type no onnx maps back.
    "bfloat16": "bfloat16",
}


def _ort_type_name(type_str: str) -> str:
    """``"tensor(bfloat16)"`` -> ``"bfloat16"`` (empty for non-tensors)."""
    return type_str[len("tensor(") : -1] if type_str.startswith("tensor(") else ""


def _to_ortvalue(value: np.ndarray):
    """An OrtValue holding ``value``; ml_dtypes arrays are written as raw (packed) bytes."""
    import ctypes

    ort = ort_module()
    name = _ML_TO_ONNX.get(value.dtype.name)
    if name is None:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
    _, elem_name, bits = _RAW_TYPES[name]
    flat = np.ascontiguousarray(value).reshape(-1)
    codes = flat.view(np.uint16 if bits == 16 else np.uint8)
    if bits < 8:  # packed, the first element in the lowest bits of each byte
        per = 8 // bits
        codes = (codes & ((1 << bits) - 1)).astype(np.uint8)
        codes = np.concatenate([codes, np.zeros((-len(codes)) % per, np.uint8)]).reshape(-1, per)
        codes = np.bitwise_or.reduce(
            [codes[:, k] << np.uint8(k * bits) for k in range(per)], axis=0
        ).astype(np.uint8)
    raw = codes.tobytes()
    out = ort.OrtValue.ortvalue_from_shape_and_type(
        list(value.shape), getattr(onnx.TensorProto, elem_name)
    )
    if raw:
        ctypes.memmove(out.data_ptr(), raw, min(len(raw), out.tensor_size_in_bytes()))
    return out


def _from_ortvalue(value):
    """A numpy array (ml_dtypes for the types numpy lacks) from an OrtValue."""
    import ctypes

    import ml_dtypes  # a dependency of onnx

    name = _ort_type_name(value.data_type())
    if name not in _RAW_TYPES:
        return value.numpy()
    ml_name, _, bits = _RAW_TYPES[name]
    size = value.tensor_size_in_bytes()
    raw = bytes((ctypes.c_char * size).from_address(value.data_ptr())) if size else b""
    shape = value.shape()
    dtype = np.dtype(getattr(ml_dtypes, ml_name))
    if bits >= 8:
        codes = np.frombuffer(raw, np.uint16 if bits == 16 else np.uint8)
        return codes.view(dtype).reshape(shape).copy()
    count = int(np.prod(shape)) if shape else 1
    packed = np.frombuffer(raw, np.uint8)
    mask = (1 << bits) - 1
    codes = np.stack([(packed >> (k * bits)) & mask for k in range(8 // bits)], axis=1)
    # ml_dtypes keeps the code in the low bits of its byte, signed types included.
    return codes.reshape(-1)[:count].astype(np.uint8).view(dtype).reshape(shape).copy()


def onnx_dtype_of(array: np.ndarray) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)


def runtime_infos(model: Model, names: Iterable[str], options=None) -> dict[str, TensorInfo]:
    """How onnxruntime types ``names`` when it builds a session over ``model`` (no run):
    see :meth:`Session.output_types`. Empty when onnxruntime cannot load
    the model (a run would then say why).

    Args:
        options: RunOptions for the session (its custom op libraries matter; typing needs
            no optimisation).
    """
    from surgeon.graph_facts import clean_info

    names = list(dict.fromkeys(names))
    try:
        session = Session(model, extra_outputs=names, options=options)
    except SurgeonError:
        return {}
    wanted = set(names)
    return {n: clean_info(t) for n, t in session.output_types().items() if n in wanted}
