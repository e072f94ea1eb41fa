"""Helpers the PyTorch bridge shares: the lazy torch import, flattening of PyTorch
value structures into named leaves, and keeping the exporters quiet."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from surgeon.errors import SurgeonError

INSTALL_HINT = "install the [torch] extra: pip install torch==2.13.0 onnxscript"
EXPORTERS = ("dynamo", "torchscript")


def _torch():
    try:
        import torch
    except ImportError:
        raise SurgeonError(
            "PyTorch is not installed, and surgeon.torch needs it", hint=INSTALL_HINT
        ) from None
    return torch


# ---------------------------------------------------------------------- structure
@dataclass(frozen=True)
class _Leaf:
    path: str
    value: object
    in_dict: bool
    depth: int


@dataclass(frozen=True)
class _Signature:
    """The module's inputs and outputs as PyTorch gives them, and their ONNX names."""

    in_names: list[str]  # one per tensor argument
    in_tensors: list[_Leaf]
    numbers: dict[str, _Leaf]  # Python numbers among the arguments, by name
    others: list[_Leaf]  # strings, None, other objects among the arguments
    export_names: list[str]  # input_names given to the exporter
    leaves: list[_Leaf]
    tensor_leaves: list[_Leaf]
    out_names: list[str]
    axes: dict[str, dict[int, str]]


def _flatten(obj, prefix: str, depth: int = 0, in_dict: bool = False) -> list[_Leaf]:
    """Flatten a PyTorch output structure the way the exporters do (dicts in insertion
    order, sequences in order), keeping a readable path for every leaf."""
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        return [_Leaf(prefix or "output", obj, in_dict, depth)]
    if isinstance(obj, Mapping):
        out = []
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, True)
        return out
    if isinstance(obj, (list, tuple)):
        fields = getattr(obj, "_fields", None)  # a namedtuple keeps its field names
        out = []
        for i, v in enumerate(obj):
            part = fields[i] if fields else str(i)
            if prefix:
                name = f"{prefix}.{part}"
            else:
                name = part if fields else f"output{i}"
            out += _flatten(v, name, depth + 1, in_dict)
        return out
    return [_Leaf(prefix or "output", obj, in_dict, depth)]


def _describe_value(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        short = value if len(value) <= 20 else value[:17] + "..."
        return f"a str ({short!r})"
    if isinstance(value, bool):
        return f"a bool ({value})"
    if isinstance(value, (int, float)):
        return f"a Python number ({value})"
    if isinstance(value, np.ndarray) or type(value).__module__ == "numpy":
        return "a numpy value"
    return f"a {type(value).__name__}"


def _argument_names(module, count: int) -> list[str]:
    """Names for the positional arguments, from ``forward``'s signature."""
    try:
        params = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    star = None
    try:
        for p in inspect.signature(module.forward).parameters.values():
            if p.kind is p.VAR_POSITIONAL:
                star = p.name
    except (TypeError, ValueError):
        pass
    names = []
    for i in range(count):
        if i < len(params):
            names.append(params[i])
        else:
            names.append(f"{star or 'input'}{i}")
    return names


def _input_leaves(module, args: tuple) -> list[_Leaf]:
    """The leaves of the positional arguments, in order, named after forward's parameters
    (``images``; ``images.0`` for a list of tensors)."""
    leaves = []
    for name, arg in zip(_argument_names(module, len(args)), args, strict=True):
        leaves += _flatten(arg, name)
    return leaves


def _onnx_name(path: str) -> str:
    # ONNX accepts any string, but plain names are easier on every tool downstream.
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", path) or "output"


def _as_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16
        t = t.float()
    return t.numpy().copy()


# ---------------------------------------------------------------------- quiet export
@contextlib.contextmanager
def _quiet(fd_level: bool):
    """Keep the exporters' progress prints and logs off the user's terminal (the library
    never prints). ``fd_level`` also silences file descriptors 1 and 2, where the
    TorchScript exporter's C++ logger writes its verbose graph dump."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    saved = []
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if fd_level:
                try:
                    for fd in (1, 2):
                        for stream in (sys.__stdout__, sys.__stderr__):
                            if stream is not None:
                                stream.flush()
                        saved.append((fd, os.dup(fd)))
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    for fd, _ in saved:
                        os.dup2(devnull, fd)
                    os.close(devnull)
                except OSError:  # no real descriptors (embedded interpreters): log as is
                    for fd, copy in saved:
                        os.dup2(copy, fd)
                        os.close(copy)
                    saved = []
            yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _run_module(torch, module, args: tuple, failure: str):
    """The module's output on ``args`` without autograd.

    Raises:
        SurgeonError: ``failure``, then why, when the module raises on these inputs.
    """
    try:
        with torch.no_grad():
            return module(*args)
    except Exception as e:  # noqa: BLE001 - the user's forward may raise anything; theirs to fix
        raise SurgeonError(f"{failure}: {_torch_error_text(e)}") from None


def _torch_error_text(e: BaseException) -> str:
    """The informative part of an exporter exception (torch wraps them in long notes)."""
    chain = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 5:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    # The innermost exception usually says what the model did wrong.
    for exc in reversed(chain):
        text = str(exc).strip()
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        if text:
            line = text.splitlines()[0]
            return f"{type(exc).__name__}: {line}"
    return type(e).__name__
