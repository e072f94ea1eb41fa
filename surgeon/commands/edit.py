"""`surgeon edit`: node-level edits (attributes, initializers, bypass, delete, insert, op
type), applied in the order given and checked by the checker, shape inference and an
onnxruntime run; the output diff against the original is information unless
``--expect-same``."""

from __future__ import annotations

import argparse

from surgeon.commands import _common
from surgeon.outcomes import EditOutcome

HELP = "node-level edits: attributes, initializers, bypass/delete/insert nodes, op types"
DESCRIPTION = (
    HELP + "\n\nOperations apply in the order given (repeat any of them; --plan adds a JSON\n"
    "file's operations at its place). Each is checked against the model as the ones\n"
    "before it left it. Names may hold '.', '=' or ':': every split the syntax allows is\n"
    "tried and the one naming something in the model is taken; a spec that reads two ways\n"
    "is refused (use --plan). Attribute values are typed by the node's current attribute,\n"
    "else the op's schema (an attribute it does not know is refused, with close names):\n"
    "3, 0.5, text, [1,2] or 1,2, a .npy for a tensor attribute.\n\n"
    "These edits change values on purpose. What fails the edit (exit 1, nothing written):\n"
    "onnx.checker, strict shape inference, onnxruntime loading and running it (a check\n"
    "the original fails too is noted, not failed). The outputs are then compared with the\n"
    "original's as information; --expect-same makes that comparison a check too.\n"
    "Exit 0 edited (and -o written), 1 a check failed, 2 bad input (unknown name, bad\n"
    "value, bad .npy, a plan that does not parse): nothing is written on 1 or 2.\n\n"
    "JSON (--json): schema surgeon.edit/1 with details.operations [{index, op, text, ...}]\n"
    "and verification.checks [{name, passed, message}], verification.outputs_same.\n\n"
    "examples:\n"
    "  surgeon edit m.onnx --set-attribute 'conv1.group=2' -o out.onnx\n"
    "  surgeon edit m.onnx --bypass dropout --expect-same -o out.onnx\n"
    "  surgeon edit m.onnx --insert-after 'logits:Softmax:axis=-1' -o out.onnx\n"
    "  surgeon edit m.onnx --initializer 'fc.weight=w.npy' --op-type act=Relu -o out.onnx\n"
    "  surgeon edit m.onnx --plan edits.json -o out.onnx"
)


class NodeEditOutcome(EditOutcome):
    """What ``surgeon edit`` did."""


class _Operation(argparse.Action):
    """Appends (flag, text) to ``args.operations``, so every operation flag keeps its
    place in one ordered list."""

    def __call__(self, parser, namespace, values, option_string=None):
        ops = list(getattr(namespace, "operations", None) or [])
        ops.append((self.option_strings[0], values))
        namespace.operations = ops


# flag -> (its spec, its help); surgeon.edits.node_edits_cli.FLAGS reads the same specs
# (a test keeps them equal). Written here: the parser is built without importing onnx.
OPERATION_FLAGS = {
    "--set-attribute": ("NODE.ATTR=VALUE", "set a node's attribute (added if absent)"),
    "--remove-attribute": ("NODE.ATTR", "remove a node's attribute"),
    "--initializer": (
        "NAME=FILE.npy",
        "replace an initializer's value from a .npy (dtype/shape may change)",
    ),
    "--bypass": ("NODE", "remove a node; its readers read its first input"),
    "--delete": ("NODE", "bypass a node and remove what only fed it"),
    "--insert-after": (
        "TENSOR:OP[:ATTR=V,...]",
        "insert a node reading TENSOR; TENSOR's readers read its output",
    ),
    "--op-type": ("NODE=OP", "change a node's op type (NODE=DOMAIN::OP for a custom op)"),
}


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the .onnx file")
    group = parser.add_argument_group("operations (repeatable, applied in the order given)")
    for flag, (form, text) in OPERATION_FLAGS.items():
        group.add_argument(flag, action=_Operation, dest="operations", metavar=form, help=text)
    group.add_argument(
        "--plan",
        action=_Operation,
        dest="operations",
        metavar="EDITS.json",
        help='operations from a JSON list, e.g. [{"op": "bypass", "node": "n3"}]',
    )
    parser.set_defaults(operations=[])
    parser.add_argument(
        "--expect-same",
        action="store_true",
        help="fail (exit 1) unless every output equals the original's within --atol/--rtol",
    )
    _common.add_output_arguments(parser)
    _common.add_feed_arguments(parser)
    _common.add_tolerance_arguments(parser)
    _common.add_runtime_arguments(parser)


def _read_operations(args, model, plans: dict) -> list:
    """The operations of the command line, in order. A spec is read against the input
    model; one naming something it lacks is read again against the model the operations
    before it make (so a node an --insert-after creates can be edited next)."""
    from surgeon.edits.node_edits import plan_node_edits
    from surgeon.edits.node_edits_cli import parse_spec
    from surgeon.errors import NameNotFoundError, SurgeonError, UsageError

    operations, errors = [], []
    for flag, text in args.operations:
        if flag == "--plan":
            operations += plans[text]
            continue
        try:
            operations.append(parse_spec(flag, text, model.proto, model.name))
        except NameNotFoundError as e:
            if not operations or errors:
                errors.append(e)
                continue
            try:
                state, _ = plan_node_edits(model, operations)
                operations.append(parse_spec(flag, text, state, model.name))
            except SurgeonError:
                errors.append(e)  # the input model's account of the name
        except SurgeonError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        first = next((e for e in errors if isinstance(e, NameNotFoundError)), None)
        problems = [e.message for e in errors]
        message = f"{len(errors)} operations cannot be read"
        if first is not None:
            raise NameNotFoundError(
                message, name=first.name, suggestions=first.suggestions, problems=problems
            )
        raise UsageError(message, problems=problems)
    return operations


def run(args, ctx) -> int:
    from surgeon.edits.node_edits import edit_nodes
    from surgeon.edits.node_edits_cli import list_npy_files, read_plan
    from surgeon.errors import UsageError
    from surgeon.loading import load

    if not args.operations:
        raise UsageError(
            "no operation given: nothing to edit",
            hint="Give one or more of --set-attribute, --remove-attribute, --initializer, "
            "--bypass, --delete, --insert-after, --op-type, --plan.",
        )
    tol = _common.tolerance(args)
    feeds = _common.feed_options(args)
    options = _common.run_options(args)
    plan_files = [text for flag, text in args.operations if flag == "--plan"]
    reads = [("the --feeds file", args.feeds)] + [("the --plan file", p) for p in plan_files]
    _common.check_files(args, [(args.model, "the input model")], reads=reads)
    plans = {p: read_plan(p) for p in dict.fromkeys(plan_files)}  # bad JSON: before loading
    model = load(args.model)
    operations = _read_operations(args, model, plans)
    reads += [("the --initializer file", p) for p in list_npy_files(operations)]
    _common.check_files(args, [(model, "the input model")], reads=reads)
    with ctx.status("edit: editing and checking"):
        edited = edit_nodes(
            model,
            operations,
            expect_same=args.expect_same,
            feed_options=feeds,
            options=options,
            tolerance=tol,
        )
    written = _common.save_if_passed(edited, args)
    return ctx.finish(NodeEditOutcome(edited, args.model, args.output, written))
