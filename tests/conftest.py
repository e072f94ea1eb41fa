"""Shared fixtures: the sample models, a CLI runner with captured consoles, tiny models."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from rich.console import Console

from surgeon.cli import main

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)


def run_cli(*argv: str) -> CliResult:
    """Call ``surgeon.cli.main`` with fixed-width, colourless consoles."""
    out, err = io.StringIO(), io.StringIO()
    status = main(
        [str(a) for a in argv],
        Console(file=out, width=100, color_system=None),
        Console(file=err, width=100, color_system=None),
    )
    return CliResult(status, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def samples(tmp_path) -> Path:
    """A private copy of sample_models/, so tests may write next to the models."""
    dst = tmp_path / "samples"
    shutil.copytree(SAMPLES, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dst


def parse(text: str) -> onnx.ModelProto:
    """A model from ONNX text syntax (the test reads the whole model)."""
    return onnx.parser.parse_model(text)


def write(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def quantize_qdq(proto, folder, shape, *, batches: int, exclude=()):
    """``proto`` through onnxruntime's ``quantize_static`` (QDQ, QInt8 activations and
    weights), calibrated on ``batches`` seeded standard-normal batches of input ``x`` of
    ``shape``; ``exclude`` is its ``nodes_to_exclude``. Returns the quantized ModelProto."""
    import logging

    from onnxruntime import quantization

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter(
                [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)]
            )

        def get_next(self):
            return next(self.batches, None)

    src, dst = Path(folder) / "q_src.onnx", Path(folder) / "q_dst.onnx"
    onnx.save(proto, str(src))
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice
    quantization.quantize_static(
        str(src),
        str(dst),
        Calibration(),
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
        nodes_to_exclude=list(exclude),
    )
    return onnx.load(str(dst))


@pytest.fixture
def onnx_nodes(monkeypatch):
    """Measure and compare with ONNX nodes, not surgeon's kernel library (the path taken
    where the library was not built): see surgeon.fastops."""
    monkeypatch.setenv("SURGEON_FASTOPS", "0")


@pytest.fixture(params=["kernels", "nodes"])
def measure_path(request, monkeypatch):
    """Each test twice: with surgeon's kernel library (when built) and with ONNX nodes."""
    from surgeon import fastops

    if request.param == "nodes":
        monkeypatch.setenv("SURGEON_FASTOPS", "0")
    elif not fastops.available():
        pytest.skip("surgeon's kernel library is not built here")
    return request.param
