"""Benchmark: load, inspect and debug statistics on models with many nodes.

Builds, for each size, a chain of N small nodes (``Add`` of a one-element constant
initializer, alternating with ``Relu``), each named and with a declared ``value_info`` per
tensor and a TorchScript-style node name, so that every per-node step of surgeon has work
to do: structural validation, the inspect summary, the origin lookup and the
declared-vs-real shape check of ``debug``. Each step is timed in this process:

    load       surgeon.load (parse, external data, structural validation)
    inspect    surgeon.inspection.describe (what `surgeon inspect` shows)
    origins    surgeon.origin.node_origin for every node (what a debug report asks)
    shapes     surgeon.shapecheck.declared_vs_actual over every declared tensor
    debug      surgeon.debug with --tap all in statistics mode (only when --debug is
               given: it also times onnxruntime on the tapped model)

The baseline each figure is judged against is linear growth: the last column gives the
time per 1k nodes, which stays flat when the step is linear.

    python benchmarks/large_graph.py [--sizes 5000 20000 100000] [--debug]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_chain(nodes: int) -> onnx.ModelProto:
    """A chain of ``nodes`` nodes (Add, Relu, Add, ...) with declared value_info."""
    one = numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half")
    graph_nodes = []
    value_info = []
    previous = "x"
    for i in range(nodes):
        out = f"t{i}"
        if i % 2 == 0:
            graph_nodes.append(
                helper.make_node("Add", [previous, "half"], [out], name=f"/block{i // 2}/Add")
            )
        else:
            graph_nodes.append(
                helper.make_node("Relu", [previous], [out], name=f"/block{i // 2}/Relu")
            )
        if i < nodes - 1:
            value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4]))
        previous = out
    graph = helper.make_graph(
        graph_nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", 4])],
        [one],
        value_info=value_info,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def timed(label: str, nodes: int, fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(
        f"{nodes:>8}  {label:<8} {seconds:8.2f} s   {1000 * seconds / nodes * 1000:7.2f} ms/1k nodes"
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 100000])
    parser.add_argument("--debug", action="store_true", help="also time `debug --tap all`")
    args = parser.parse_args(argv)

    import surgeon
    from surgeon.inspection import describe
    from surgeon.loading import load
    from surgeon.origin import node_origin
    from surgeon.shapecheck import declared_vs_actual

    print(f"{'nodes':>8}  {'step':<8} {'time':>10}   {'per 1k nodes':>18}")
    with tempfile.TemporaryDirectory(prefix="surgeon-bench-") as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"chain{n}.onnx"
            onnx.save(build_chain(n), str(path))
            model = timed("load", n, lambda path=path: load(path))
            timed("inspect", n, lambda model=model: describe(model))
            names = [node.name for node in model.proto.graph.node]
            timed(
                "origins",
                n,
                lambda model=model, names=names: [node_origin(model, name) for name in names],
            )
            values = {"x": np.zeros((1, 4), np.float32)}
            values.update({f"t{i}": np.zeros((1, 4), np.float32) for i in range(n)})
            timed("shapes", n, lambda model=model, values=values: declared_vs_actual(model, values))
            if args.debug:
                timed("debug", n, lambda model=model: surgeon.debug(model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
