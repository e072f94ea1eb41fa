"""What :func:`surgeon.torch.export` returns: the pitfalls found, one comparison per set
of input shapes, and the whole :class:`ExportCheck`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from surgeon.compare import DiffReport
from surgeon.model import Model


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class Pitfall:
    """One problem the export check found.

    Attributes:
        kind: ``lost-output`` (a PyTorch output the ONNX model does not have), ``dict-output``
            (dict keys flattened away), ``nested-output``, ``baked-argument`` (a non-tensor
            argument frozen into the graph), ``output-count``, ``axis-static`` (a declared
            dynamic axis that is fixed in the file), ``axis-failed`` (onnxruntime fails at
            another size), ``axis-shape`` (wrong output shape at another size),
            ``mismatch`` (values differ), ``tracer-warning`` (a warning the exporter gave),
            ``training-mode``.
        severity: ``error`` (the check fails) or ``warning``.
        message: One sentence for the user.
        node: The ONNX node involved, when one can be named.
        origin: That node's PyTorch module and source line, when the model says.
    """

    kind: str
    severity: str
    message: str
    node: str | None = None
    origin: str | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "node": self.node,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class ShapeRun:
    """One comparison of onnxruntime against PyTorch at one set of input shapes.

    ``report`` is None when the run could not compare (``error`` says why onnxruntime
    failed, ``skipped`` why the run was not attempted, e.g. PyTorch itself fails there).
    """

    label: str
    shapes: dict[str, list[int]]
    report: DiffReport | None = None
    error: str | None = None
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is not None or (self.error is None and bool(self.report))

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "shapes": self.shapes,
            "passed": self.passed,
            "error": self.error,
            "skipped": self.skipped,
            "report": self.report.to_dict() if self.report is not None else None,
        }


@dataclass(frozen=True)
class ExportCheck:
    """What :func:`export` produced and found. Truthy when no pitfall is an error.

    Attributes:
        model: The exported model (in memory, whether or not it was written).
        path: Where it was written, or None (no path given, or the check failed).
        exporter: ``dynamo`` or ``torchscript``.
        input_names, output_names: The ONNX model's inputs and outputs.
        output_map: ONNX output -> the PyTorch output it holds (``boxes``, ``output1.0``).
        dynamic_axes: The declared dynamic axes, normalised to ``{name: {axis: dim}}``.
        runs: One ShapeRun per set of input shapes tried, the export shape first.
        pitfalls: Everything found, errors and warnings.
        export_seconds: Time ``torch.onnx.export`` took.
        check_seconds: Time the checks took (PyTorch and onnxruntime runs).
    """

    model: Model
    path: Path | None
    exporter: str
    input_names: list[str]
    output_names: list[str]
    output_map: dict[str, str]
    dynamic_axes: dict[str, dict[int, str]]
    runs: list[ShapeRun]
    pitfalls: list[Pitfall]
    export_seconds: float
    check_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Pitfall]:
        return [p for p in self.pitfalls if p.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        """One line: the verdict, the runs and the first problems."""
        tried = [r for r in self.runs if r.skipped is None]
        if self.passed:
            text = f"PASS: {self.exporter} export matches PyTorch at {len(tried)} input shape(s)"
            warn = [p for p in self.pitfalls if p.severity == "warning"]
            if warn:
                text += f" ({len(warn)} warning(s))"
            return text
        first = "; ".join(p.message for p in self.errors[:3])
        more = f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
        return f"FAIL: {len(self.errors)} problem(s) in the {self.exporter} export: {first}{more}"

    def to_dict(self) -> dict:
        return {
            "schema": "surgeon.torch_export/1",
            "passed": self.passed,
            "summary": self.summary(),
            "path": str(self.path) if self.path is not None else None,
            "exporter": self.exporter,
            "inputs": list(self.input_names),
            "outputs": list(self.output_names),
            "output_map": dict(self.output_map),
            "dynamic_axes": {
                k: {str(a): d for a, d in v.items()} for k, v in self.dynamic_axes.items()
            },
            "runs": [r.to_dict() for r in self.runs],
            "pitfalls": [p.to_dict() for p in self.pitfalls],
            "export_seconds": self.export_seconds,
            "check_seconds": self.check_seconds,
            "notes": list(self.notes),
        }
