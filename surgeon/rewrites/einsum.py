"""The ``einsum`` rule: Einsum as Transpose, Reshape, MatMul and ReduceSum.

Equations with any number of operands, explicit (``ij,jk->ik``) or implicit (``ij,jk``:
the output is every letter that appears once, sorted) are handled: batch matmuls
(``bij,bjk->bik``), transposes (``ij->ji``), sums (``ij->i``, ``ij->``), contractions
over several letters (``bhqd,bhkd->bhqk``), outer products (``i,j->ij``). Operands are
combined left to right; for each pair, letters in neither the rest nor the output are
summed first (ReduceSum), then both sides are transposed to [batch, kept, contracted] /
[batch, contracted, kept], flattened to three dims (static sizes as constants, dynamic
ones read with Shape), multiplied with MatMul and reshaped back.

"Unchanged": the same output within tolerance (a MatMul sums in another order than
onnxruntime's Einsum kernel; integer equations are exact). Refused: ellipsis (``...``),
a letter repeated within one operand (a diagonal, ``ii->i``), output letters that no
operand has.
"""

from __future__ import annotations

import re

from surgeon.rewrites.graph import Match, RewriteGraph


def parse_equation(equation: str, count: int) -> tuple[list[str], str]:
    """(operand terms, output term) of an Einsum equation, or ValueError saying why the
    rule does not handle it."""
    text = equation.replace(" ", "")
    if "." in text:
        raise ValueError(f"equation `{equation}` uses an ellipsis (...), not implemented")
    lhs, arrow, rhs = text.partition("->")
    terms = lhs.split(",")
    if len(terms) != count:
        raise ValueError(f"equation `{equation}` has {len(terms)} operand(s), the node {count}")
    for term in [*terms, rhs]:
        if not re.fullmatch(r"[A-Za-z]*", term):
            raise ValueError(f"equation `{equation}` is not a list of letters")
        repeated = sorted({c for c in term if term.count(c) > 1})
        if repeated:
            raise ValueError(
                f"equation `{equation}` repeats {', '.join(repeated)} within one term "
                "(a diagonal or trace), not implemented"
            )
    letters = "".join(terms)
    if not arrow:
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    missing = [c for c in rhs if c not in letters]
    if missing:
        raise ValueError(f"equation `{equation}`: output letters {missing} are in no operand")
    return terms, rhs


class EinsumRule:
    """Einsum -> Transpose/Reshape/MatMul/ReduceSum."""

    name = "einsum"
    summary = "Einsum -> MatMul/Transpose/Reshape/ReduceSum (no ellipsis, no diagonals)"
    exact = False

    def matches(self, graph: RewriteGraph) -> list[Match]:
        found = []
        for node in graph.nodes:
            if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx"):
                continue
            equation = graph.attribute(node, "equation", "")
            refusal = None
            try:
                parse_equation(equation, len(node.input))
            except ValueError as e:
                refusal = f"attribute equation: {e}"
            key = graph.key(node)
            found.append(Match(key, (key,), f"`{equation}`", refusal))
        return found

    def apply(self, graph: RewriteGraph, match: Match) -> None:
        node = graph.node(match.node)
        terms, output = parse_equation(graph.attribute(node, "equation", ""), len(node.input))
        sources: dict[str, tuple[str, int]] = {}  # letter -> (an input with it, its axis)
        for tensor, term in zip(node.input, terms, strict=True):
            for axis, letter in enumerate(term):
                # any operand's dim will do; a static one saves a Shape op
                if letter not in sources or not self._static(graph, sources[letter]):
                    sources[letter] = (tensor, axis)
        build = _Builder(graph, sources)
        current, term = node.input[0], terms[0]
        for i in range(1, len(terms)):
            later = set(output).union(*terms[i + 1 :])
            current, term = build.pair(current, term, node.input[i], terms[i], later)
        current, term = build.reduce_to(current, term, set(output))
        perm = [term.index(c) for c in output]
        if perm != list(range(len(perm))):
            graph.op("Transpose", [current], "einsum_out", outputs=[node.output[0]], perm=perm)
        else:
            graph.op("Identity", [current], "einsum_out", outputs=[node.output[0]])

    @staticmethod
    def _static(graph: RewriteGraph, source: tuple[str, int]) -> bool:
        shape = graph.shape(source[0])
        if shape is None or source[1] >= len(shape):
            return False
        return isinstance(shape[source[1]], int) and shape[source[1]] > 0


class _Builder:
    """The nodes of one Einsum's replacement."""

    def __init__(self, graph: RewriteGraph, sources: dict[str, tuple[str, int]]):
        self.graph = graph
        self.sources = sources
        self.known: dict[
            str, list[int]
        ] = {}  # constants made here: one Concat of them is one constant

    def ints(self, values: list[int], hint: str) -> str:
        name = self.graph.ints(values, hint)
        self.known[name] = list(values)
        return name

    def size(self, letters: str) -> str:
        """The product of the letters' sizes as an int64 [1]: a constant when static."""
        g = self.graph
        static, dynamic = 1, []
        for letter in letters:
            tensor, axis = self.sources[letter]
            shape = g.shape(tensor)
            if shape is not None and isinstance(shape[axis], int) and shape[axis] > 0:
                static *= shape[axis]
            else:
                dynamic.append(g.dim(tensor, axis, f"einsum_{letter}"))
        if not dynamic:
            return self.ints([static], "einsum_size")
        total = dynamic[0]
        for d in dynamic[1:]:
            total = g.op("Mul", [total, d], "einsum_size")
        if static != 1:
            total = g.op("Mul", [total, g.ints([static], "einsum_static")], "einsum_size")
        return total

    def shape(self, parts: list[str]) -> str:
        if all(p in self.known for p in parts):
            return self.ints([v for p in parts for v in self.known[p]], "einsum_shape")
        if len(parts) == 1:
            return parts[0]
        return self.graph.op("Concat", parts, "einsum_shape", axis=0)

    def reduce_to(self, tensor: str, term: str, keep: set[str]) -> tuple[str, str]:
        """Sum away the letters of ``term`` not in ``keep``."""
        axes = [i for i, c in enumerate(term) if c not in keep]
        if not axes:
            return tensor, term
        out = self.graph.reduce("ReduceSum", tensor, axes, 0, "einsum_sum")
        return out, "".join(c for c in term if c in keep)

    def transpose(self, tensor: str, term: str, order: str) -> str:
        perm = [term.index(c) for c in order]
        if perm == list(range(len(perm))):
            return tensor
        return self.graph.op("Transpose", [tensor], "einsum_t", perm=perm)

    def pair(self, a: str, ta: str, b: str, tb: str, later: set[str]) -> tuple[str, str]:
        """Contract operands a and b; the result keeps the letters in ``later``."""
        g = self.graph
        a, ta = self.reduce_to(a, ta, later | set(tb))
        b, tb = self.reduce_to(b, tb, later | set(ta))
        batch = "".join(c for c in ta if c in tb and c in later)
        contracted = "".join(c for c in ta if c in tb and c not in later)
        a_only = "".join(c for c in ta if c not in tb)
        b_only = "".join(c for c in tb if c not in ta)
        a = self.transpose(a, ta, batch + a_only + contracted)
        b = self.transpose(b, tb, batch + contracted + b_only)
        keep = [self.ints([0] * len(batch), "einsum_batch")] if batch else []
        if len(a_only) != 1 or len(contracted) != 1:
            shape = self.shape(keep + [self.size(a_only), self.size(contracted)])
            a = g.op("Reshape", [a, shape], "einsum_a")
        if len(b_only) != 1 or len(contracted) != 1:
            shape = self.shape(keep + [self.size(contracted), self.size(b_only)])
            b = g.op("Reshape", [b, shape], "einsum_b")
        product = g.op("MatMul", [a, b], "einsum_mm")
        if len(a_only) != 1 or len(b_only) != 1:
            dims = [self.size(c) for c in a_only + b_only]
            product = g.op("Reshape", [product, self.shape(keep + dims)], "einsum_ab")
        return product, batch + a_only + b_only
