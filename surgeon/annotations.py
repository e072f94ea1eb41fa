"""Values checked against type annotations, for the public API's argument checks.

:mod:`surgeon.arguments` checks every argument of ``surgeon.<name>(...)``, and
:func:`checked_init` every field of the option dataclasses, against the annotation
written in the signature. Annotations are strings here (``from __future__ import
annotations``) and some name types imported only for type checkers, so they are read
with :mod:`ast`, never evaluated: the forms the API uses are understood (``str``, ``int``,
``float``, ``bool``, ``None``, unions, ``Sequence[...]``/``Iterable[...]``/``tuple[...]``,
``Mapping[K, V]``, ``Callable``, surgeon's option and model classes), and anything else
(``np.ndarray``, ``object``) accepts every value and is left to the callee.

:func:`checked_init` decorates the option dataclasses; it lives here, not in
:mod:`surgeon.arguments`, because this module imports nothing of surgeon but its errors,
so the dataclasses' modules can import it without an import circle.

One convenience is part of the check: a ``str`` where only a collection of strings is
accepted is one name, ``("name",)``, never its letters.
"""

from __future__ import annotations

import ast
import functools
import inspect
import numbers
import os
import types
from collections.abc import Callable, Iterable, Mapping

from surgeon.errors import UsageError, did_you_mean

# Collections whose items are checked. A str or a mapping is never one of them.
_COLLECTIONS = frozenset(
    {"Iterable", "Sequence", "Collection", "list", "tuple", "set", "frozenset", "AbstractSet"}
)
_MAPPINGS = frozenset({"Mapping", "MutableMapping", "dict"})
# surgeon's own classes an annotation may name: module that defines each.
_SURGEON_CLASSES = {
    "Model": "surgeon.model",
    "TensorInfo": "surgeon.model",
    "Chain": "surgeon.verification",
    "Tolerance": "surgeon.compare",
    "FeedOptions": "surgeon.feeds",
    "RunOptions": "surgeon.runner",
    "DebugOptions": "surgeon.debugging",
    "DiffReport": "surgeon.compare",
    "Edited": "surgeon.edits",
}


class Mismatch(Exception):
    """``value`` does not fit; ``detail`` says where inside it (``key 1 is int``)."""

    def __init__(self, detail: str = ""):
        super().__init__(detail)
        self.detail = detail


@functools.cache
def parse(annotation: str) -> ast.expr | None:
    """The annotation's expression, or None (anything goes) when it is not Python."""
    try:
        return ast.parse(annotation, mode="eval").body
    except SyntaxError:
        return None


def type_name(value) -> str:
    return "None" if value is None else type(value).__name__


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr  # typing.Sequence, os.PathLike, np.ndarray
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    return None


def _alternatives(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _alternatives(node.left) + _alternatives(node.right)
    if isinstance(node, ast.Subscript) and _name(node.value) == "Optional":
        return [node.slice, ast.Constant(None)]
    if isinstance(node, ast.Subscript) and _name(node.value) == "Union":
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return [alt for item in items for alt in _alternatives(item)]
    return [node]


def _arguments(node: ast.Subscript) -> list[ast.expr]:
    return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]


def _surgeon_class(name: str):
    import importlib

    return getattr(importlib.import_module(_SURGEON_CLASSES[name]), name)


def _accepts_str(node: ast.expr) -> bool:
    return any(_name(alt) in ("str", "Dim", "object", "Any") for alt in _alternatives(node))


def conform(value, annotation: ast.expr | None):
    """``value`` if it fits ``annotation`` (a lone str as a one-name tuple where only a
    collection of names fits), else :class:`Mismatch`."""
    if annotation is None:
        return value
    alternatives = _alternatives(annotation)
    last = Mismatch()
    for alternative in alternatives:
        try:
            return _conform_one(value, alternative)
        except Mismatch as error:
            last = error if error.detail else last
    if isinstance(value, str) and not any(_accepts_str(alt) for alt in alternatives):
        for alternative in alternatives:
            try:
                return _conform_one((value,), alternative)
            except Mismatch:
                pass
    raise last


def _conform_one(value, node: ast.expr):  # noqa: C901 - one branch per annotation form
    name = _name(node)
    if isinstance(node, ast.Subscript):
        base = _name(node.value)
        arguments = _arguments(node)
        if base in _COLLECTIONS:
            return _conform_collection(value, base, arguments)
        if base in _MAPPINGS:
            return _conform_mapping(value, arguments)
        if base == "Callable":
            if callable(value):
                return value
            raise Mismatch()
        if base == "Literal":
            if any(isinstance(a, ast.Constant) and a.value == value for a in arguments):
                return value
            raise Mismatch()
        if base == "type":
            if isinstance(value, type):
                return value
            raise Mismatch()
        return value  # a generic surgeon does not know: left to the callee
    if name == "None":
        if value is None:
            return value
        raise Mismatch()
    if name == "str":
        if isinstance(value, str):
            return value
        raise Mismatch()
    if name == "bool":
        # numpy's bool_ is not a subclass of bool, but is one of the values a caller has.
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return value
        raise Mismatch()
    if name == "int":
        # 64-bit, as every int in ONNX (a dim, an attribute, a count): a larger one
        # cannot reach a model, and would fail deep inside onnx or numpy instead.
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            if -(2**63) <= value < 2**63:
                return value
            raise Mismatch(f"{value} does not fit in 64 bits")
        raise Mismatch()
    if name == "float":
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value
        raise Mismatch()
    if name == "Dim":
        if value is None or isinstance(value, str):
            return value
        return _conform_one(value, ast.Name("int"))
    if name == "ModelProto":
        import onnx  # loaded already: a caller holding a ModelProto imported it

        if isinstance(value, onnx.ModelProto):
            return value
        raise Mismatch()
    if name in ("PathLike", "Path"):
        if isinstance(value, os.PathLike):
            return value
        raise Mismatch()
    if name == "ModuleType":
        if isinstance(value, types.ModuleType):
            return value
        raise Mismatch()
    if name in _MAPPINGS:
        if isinstance(value, Mapping):
            return value
        raise Mismatch()
    if name in _COLLECTIONS:
        return _conform_collection(value, name, [])
    if name == "Callable":
        if callable(value):
            return value
        raise Mismatch()
    if name in _SURGEON_CLASSES:
        cls = _surgeon_class(name)
        if isinstance(value, cls):
            return value
        if name == "Model" and isinstance(value, _surgeon_class("Edited")):
            return value.model
        raise Mismatch()
    return value  # object, Any, np.ndarray, ...: the callee converts or refuses


def _conform_collection(value, base: str, arguments: list[ast.expr]):
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise Mismatch()
    items = value if isinstance(value, list | tuple | set | frozenset) else list(value)
    fixed = None
    if base == "tuple" and arguments:
        if len(arguments) == 2 and isinstance(arguments[1], ast.Constant):
            arguments = arguments[:1]  # tuple[X, ...]
        else:
            fixed = arguments
    if fixed is not None and len(items) != len(fixed):
        raise Mismatch(f"{len(items)} items, not {len(fixed)}")
    if not arguments:
        return items
    changed = False
    result = []
    for index, item in enumerate(items):
        expected = fixed[index] if fixed is not None else arguments[0]
        try:
            new = conform(item, expected)
        except Mismatch as error:
            where = f"item {index}" if isinstance(items, list | tuple) else "an item"
            inner = f" ({error.detail})" if error.detail else ""
            raise Mismatch(f"{where} is {type_name(item)}{inner}") from None
        changed = changed or new is not item
        result.append(new)
    if not changed:
        return items
    return type(items)(result) if isinstance(items, tuple | list) else result


def _conform_mapping(value, arguments: list[ast.expr]):
    if not isinstance(value, Mapping):
        raise Mismatch()
    if len(arguments) != 2:
        return value
    key_type, value_type = arguments
    changed = {}
    for key, item in value.items():
        try:
            conform(key, key_type)
        except Mismatch:
            raise Mismatch(f"key {key!r} is {type_name(key)}") from None
        try:
            new = conform(item, value_type)
        except Mismatch as error:
            inner = f": {error.detail}" if error.detail else ""
            raise Mismatch(f"the value of {key!r} is {type_name(item)}{inner}") from None
        if new is not item:
            changed[key] = new
    if not changed:
        return value
    return {**value, **changed}


def describe(annotation: ast.expr | None) -> str:
    """The annotation in words, for a message: ``a str or a sequence of str``."""
    if annotation is None:
        return "anything"
    return " or ".join(dict.fromkeys(_describe_one(a) for a in _alternatives(annotation)))


_WORDS = {
    "str": "a str",
    "int": "an int",
    "float": "a number",
    "bool": "a bool (True or False)",
    "None": "None",
    "Dim": "a dim (int, str or None)",
    "PathLike": "a path",
    "Path": "a path",
    "ModuleType": "a module",
    "ModelProto": "an onnx.ModelProto",
}


def _plain(annotation: ast.expr) -> str:
    """``str`` / ``sequence of int``: an item's description without its article; several
    alternatives in parentheses (``mapping of str to (str or sequence of int)``)."""
    words = []
    for alternative in _alternatives(annotation):
        text = _describe_one(alternative)
        for article in ("a ", "an "):
            if text.startswith(article):
                text = text[len(article) :]
        words.append(text)
    words = list(dict.fromkeys(words))
    return words[0] if len(words) == 1 else "(" + " or ".join(words) + ")"


def _describe_one(node: ast.expr) -> str:
    name = _name(node)
    if isinstance(node, ast.Subscript):
        base = _name(node.value)
        arguments = _arguments(node)
        if base in _COLLECTIONS:
            if base == "tuple" and not (
                len(arguments) == 2 and isinstance(arguments[1], ast.Constant)
            ):
                return f"a tuple ({', '.join(_plain(a) for a in arguments)})"
            return f"a sequence of {_plain(arguments[0])}"
        if base in _MAPPINGS and len(arguments) == 2:
            return f"a mapping of {_plain(arguments[0])} to {_plain(arguments[1])}"
        if base == "Callable":
            return "a callable"
        return ast.unparse(node)
    if name in _WORDS:
        return _WORDS[name]
    if name in _MAPPINGS:
        return "a mapping"
    if name in _COLLECTIONS:
        return "a sequence"
    if name == "Callable":
        return "a callable"
    if name is not None:
        return f"a {name}"
    return ast.unparse(node)


def check_value(value, annotation: str | None, what: str, error: Callable[[str], Exception]):
    """``value`` conformed to ``annotation``, or ``error(message)`` raised.

    Args:
        what: How the message names the value (``surgeon.tap(): `names```).
        error: Builds the exception from the message (a UsageError).
    """
    node = parse(annotation) if isinstance(annotation, str) else None
    try:
        return conform(value, node)
    except Mismatch as mismatch:
        detail = f" ({mismatch.detail})" if mismatch.detail else ""
        raise error(f"{what} must be {describe(node)}, not {type_name(value)}{detail}") from None


def call_shape(signature: inspect.Signature) -> str:
    """``model, path, *, inplace=...``: the parameters without annotations or long
    default values (a FeedOptions repr is a line of its own)."""
    parts = []
    star = False
    for p in signature.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(p.name if p.default is p.empty else f"{p.name}=...")
    return ", ".join(parts)


def unknown_keywords(signature: inspect.Signature, kwargs, where: str, shape: str) -> None:
    """A UsageError for keywords the signature does not have, with close matches."""
    parameters = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    keywords = [
        n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    unknown = [k for k in kwargs if k not in parameters]
    if not unknown:
        return
    problems = []
    for keyword in unknown:
        close = did_you_mean(keyword, keywords)
        problems.append(f"`{keyword}`" + (f": {close}" if close else ""))
    raise UsageError(
        f"{where}: unknown keyword argument{'s' if len(unknown) > 1 else ''} "
        + ", ".join(problems),
        hint=f"Call it as {where[:-2]}({shape}).",
    )


def check_annotated(signature: inspect.Signature, arguments: dict, skip, where: str) -> None:
    """Each bound argument conformed to its annotation (in place), or a UsageError."""
    for name, value in arguments.items():
        parameter = signature.parameters[name]
        if name in skip or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if value is parameter.default:
            continue  # the signature's own default always fits
        annotation = parameter.annotation
        if annotation is parameter.empty or not isinstance(annotation, str):
            continue
        arguments[name] = check_value(value, annotation, f"{where}: `{name}`", UsageError)


def checked_init(cls: type) -> type:
    """Decorate an option dataclass (below ``@dataclass``) so that building it checks
    its arguments: unknown keywords and values that do not fit a field's annotation
    are a UsageError, raised before the dataclass's own ``__post_init__`` runs."""
    init = cls.__init__
    signature = inspect.signature(init)
    where = f"{cls.__name__}()"
    shape = call_shape(signature.replace(parameters=list(signature.parameters.values())[1:]))

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown_keywords(signature, kwargs, where, shape)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise UsageError(
                f"{where}: {error}", hint=f"Build it as {cls.__name__}({shape})."
            ) from None
        check_annotated(signature, bound.arguments, {"self"}, where)
        init(*bound.args, **bound.kwargs)

    cls.__init__ = __init__
    return cls
