"""Opset reconciliation for a merge: both models at one default-domain opset.

When the default-domain opsets of two models differ, the one with the lower opset is
upgraded with onnx's version converter; when that fails (no adapter, or an op the newer
opset deprecates) the merge stops with the reason. Other domains must already agree.
"""

from __future__ import annotations

import onnx
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.model import Model, iter_graphs

DEFAULT_DOMAINS = ("", "ai.onnx")


def _default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return 0


def _deprecated_ops(proto: onnx.ModelProto, version: int) -> list[str]:
    found = []
    for g in iter_graphs(proto.graph):
        for n in g.node:
            if n.domain not in DEFAULT_DOMAINS or n.op_type in found:
                continue
            try:
                schema = onnx.defs.get_schema(n.op_type, version, "")
            except onnx.defs.SchemaError:
                found.append(n.op_type)
                continue
            if schema.deprecated:
                found.append(n.op_type)
    return found


def _upgrade(proto: onnx.ModelProto, target: int, name: str, other: str) -> onnx.ModelProto:
    source = _default_opset(proto)
    why = None
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(proto, target)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, IndexError...
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        converted = None
    if converted is not None:
        # The converter keeps ops that the newer opset deprecated (Upsample, ...) and
        # onnxruntime then refuses the model: treat that as a failed conversion.
        stale = _deprecated_ops(converted, target)
        if stale:
            why = f"opset {target} has no (or only a deprecated) {', '.join(stale)}"
        else:
            return converted
    raise SurgeonError(
        f"cannot merge: {name} uses opset {source} and {other} opset {target}, and onnx's "
        f"version converter cannot upgrade {name} to opset {target} ({why})",
        hint=f"Re-export {name} at opset {target}, or {other} at opset {source}.",
    )


def reconcile_opsets(first: Model, second: Model):
    """Both protos at one default-domain opset, and the merged opset_import.

    Returns:
        (first proto, second proto, opset_import list, info dict). The protos are the
        models' own when no conversion was needed (callers copy before editing).
    """
    p1, p2 = first.proto, second.proto
    v1, v2 = _default_opset(p1), _default_opset(p2)
    converted = None
    if v1 and v2 and v1 != v2:
        if v1 < v2:
            p1, converted = _upgrade(p1, v2, first.name, second.name), "first"
        else:
            p2, converted = _upgrade(p2, v1, second.name, first.name), "second"
    versions: dict[str, int] = {}
    problems = []
    for model, proto in ((first, p1), (second, p2)):
        for o in proto.opset_import:
            domain = "" if o.domain in DEFAULT_DOMAINS else o.domain
            if domain in versions and versions[domain] != o.version:
                problems.append(
                    f"domain `{domain}` is at version {versions[domain]} in {first.name} and "
                    f"{o.version} in {model.name}; only the default domain can be converted"
                )
            versions.setdefault(domain, int(o.version))
    if problems:
        raise SurgeonError(f"cannot merge {first.name} and {second.name}", problems=problems)
    opsets = [helper.make_opsetid(d, v) for d, v in versions.items()]
    info = {"first": v1, "second": v2, "merged": max(v1, v2), "converted": converted}
    return p1, p2, opsets, info
