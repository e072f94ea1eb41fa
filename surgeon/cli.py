"""The command line: a thin layer over the Python API, and surgeon's error boundary.

``main(argv, console, err_console) -> int`` parses arguments, runs one command and turns
:class:`~surgeon.errors.SurgeonError` into a one-paragraph message and an exit code.
Signals end a command the way Ctrl-C does: SIGINT, SIGTERM and SIGHUP raise in the main
thread, the stack unwinds (temp files and folders are removed) and the exit code is
128 + the signal number (130, 143, 129). A closed output pipe (``surgeon inspect m.onnx |
head -1``) ends the command quietly with 141, what a shell reports for a tool that
SIGPIPE killed; the signal itself stays ignored (Python's default) so that the write
raises and the same unwinding cleans up, which dying at the write would not.
Command modules are listed explicitly in ``COMMANDS``; each defines ``HELP``,
``add_arguments(parser)`` and ``run(args, ctx) -> int``, and imports nothing heavy at
module level, so ``surgeon --help`` imports neither onnxruntime nor rich.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from enum import IntEnum

from surgeon._version import __version__
from surgeon.errors import SurgeonError, error_document, printable


class ExitStatus(IntEnum):
    """Exit codes, the same for every command."""

    SUCCESS = 0
    VERIFICATION_FAILED = 1
    BAD_INPUT = 2
    INTERNAL_ERROR = 3  # a bug in surgeon: please report it with --traceback
    HANGUP = 129  # SIGHUP: 128 + the signal number, as shells report it
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    BROKEN_PIPE = 141  # stdout (or stderr) was closed by the reader, e.g. `| head -1`
    TERMINATED = 143  # SIGTERM


# One explicit table, in the order `surgeon --help` lists them.
COMMANDS: dict[str, str] = {
    "debug": "surgeon.commands.debug",
    "inspect": "surgeon.commands.inspect",
    "diff": "surgeon.commands.diff",
    "blame": "surgeon.commands.blame",
    "extract": "surgeon.commands.extract",
    "rename": "surgeon.commands.rename",
    "reshape-io": "surgeon.commands.reshape_io",
    "check-dynamic": "surgeon.commands.check_dynamic",
    "nms": "surgeon.commands.nms",
    "merge": "surgeon.commands.merge",
    "run": "surgeon.commands.run",
    "recipes": "surgeon.commands.recipes",
}


class Context:
    """What a command needs from the CLI: consoles and the output mode."""

    def __init__(self, console, err_console, json_mode: bool):
        self.console = console
        self.err_console = err_console
        self.json = json_mode

    def emit_json(self, data: dict) -> None:
        """Write one JSON document to stdout (no wrapping, no highlighting)."""
        write_json(self.console.file, data)

    @property
    def interactive(self) -> bool:
        """True when progress bars may be shown (a terminal, not --json)."""
        return bool(getattr(self.err_console, "is_terminal", False)) and not self.json

    def status(self, text: str):
        """A spinner with phase text on a terminal (yields ``update(text)``); a no-op
        otherwise, without importing rich."""
        if not self.interactive:
            return contextlib.nullcontext(lambda text: None)
        from surgeon.report import status

        return status(self, text)


def write_json(file, data: dict) -> None:
    """One JSON document, exactly as serialised (NaN is not valid JSON: refused)."""
    file.write(json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n")
    file.flush()


def _json_default(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class _PlainConsole:
    """Where --json output goes when no console was given: rich is not imported at all
    (it costs a tenth of a second that scripts wait for)."""

    is_terminal = False

    def __init__(self, file):
        self._file = file

    @property
    def file(self):
        return self._file

    def print(self, *objects, **_):
        self._file.write(" ".join(str(o) for o in objects) + "\n")


def _render_error_plain(ctx, error) -> None:
    lines = [f"error: {error.message}"] + [f"  - {p}" for p in error.problems]
    if error.hint:
        lines.append(error.hint)
    ctx.err_console.file.write("\n".join(map(printable, lines)) + "\n")
    write_json(ctx.console.file, error_document(error))


def _common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument(
        "--json", action="store_true", help="print the result as one JSON document on stdout"
    )
    group.add_argument(
        "--traceback", action="store_true", help="show Python tracebacks (for bug reports)"
    )
    return parent


class _Parser(argparse.ArgumentParser):
    last_error: str | None = None  # for --json: the usage error, written as a document

    def error(self, message):  # one paragraph, exit 2
        _Parser.last_error = f"{self.prog}: {message}"  # exact, for the JSON document
        self.print_usage(sys.stderr)
        # argparse quotes the user's arguments (`unrecognized arguments: ...`) raw: an
        # ESC or newline in one must not reach the terminal.
        self.exit(ExitStatus.BAD_INPUT, printable(f"{self.prog}: error: {message}") + "\n")


# Arguments that name files, by their argparse dest, as the user spells them.
_PATH_ARGUMENTS = {
    "output": "-o",
    "save": "--save",
    "html": "--html",
    "inputs": "--inputs",
    "feeds": "--feeds",
    "ref": "--ref",
    "custom_op_library": "--custom-op-library",
    "model": "MODEL",
    "first": "FIRST",
    "second": "SECOND",
    "recipe": "RECIPE",
}


def check_empty_paths(args) -> None:
    """Refuse a file argument given as an empty string.

    ``-o "$OUT"`` with OUT unset passes ``-o ''``, which read as "no -o": the whole
    command ran, wrote nothing and exited 0.

    Raises:
        UsageError: Naming the argument.
    """
    from surgeon.errors import UsageError

    for dest, flag in _PATH_ARGUMENTS.items():
        value = getattr(args, dest, None)
        # (a list is a file list only for --custom-op-library: extract's --inputs lists
        # tensor names)
        values = value if isinstance(value, list) and dest == "custom_op_library" else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise UsageError(
                f"{flag} was given an empty path",
                hint="Give a file name (is a shell variable unset?), or leave the option out.",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="surgeon",
        description="ONNX graph surgery and debugging; every edit is verified against the original with onnxruntime.",
        epilog="Exit codes: 0 success, 1 verification failed, 2 bad usage or input, 3 internal error, "
        "130 interrupted (143 SIGTERM, 129 SIGHUP), 141 output pipe closed. "
        "Run `surgeon COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parent = _common_parent()
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            parents=[parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None, console=None, err_console=None) -> int:
    """Run the CLI and return the exit status (never raises for user errors).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
        console: rich Console for results (default: stdout).
        err_console: rich Console for messages and progress (default: stderr).
    """
    from surgeon.outputs import exit_code_for, handle_signals

    try:
        with handle_signals():
            return _main(argv, console, err_console)
    except KeyboardInterrupt as e:  # before a command ran (parsing), or while reporting
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(_interrupted_text(e) + "\n")
        return exit_code_for(e)
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE


def _interrupted_text(e: KeyboardInterrupt) -> str:
    name = getattr(e, "signum", None)
    return "interrupted" if name is None else f"terminated ({e})"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe
    prints nothing (the recipe of Python's signal documentation, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _raise_broken_pipe() -> None:
    # rich's default exits with status 1 ("verification failed"): raise instead, and let
    # main() end quietly with 141.
    raise BrokenPipeError


def _main(argv, console, err_console) -> int:
    parser = build_parser()
    _Parser.last_error = None
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error
        code = int(e.code or 0) if not isinstance(e.code, str) else ExitStatus.BAD_INPUT
        args_given = sys.argv[1:] if argv is None else argv
        if code == ExitStatus.BAD_INPUT and "--json" in args_given and _Parser.last_error:
            import json

            doc = {
                "schema": "surgeon.error/1",
                "error": "UsageError",
                "message": _Parser.last_error,
                "problems": [],
                "hint": "Run `surgeon COMMAND --help` for the options.",
                "suggestions": [],
                "exit_code": int(ExitStatus.BAD_INPUT),
            }
            out = console.file if console is not None else sys.stdout
            out.write(json.dumps(doc, indent=2) + "\n")
            out.flush()
        return code
    if not getattr(args, "command", None):
        parser.print_help(sys.stdout)
        return ExitStatus.BAD_INPUT
    json_mode = bool(getattr(args, "json", False))
    if json_mode and console is None and err_console is None:
        console, err_console = _PlainConsole(sys.stdout), _PlainConsole(sys.stderr)
        ctx = Context(console, err_console, json_mode)
        render_error = _render_error_plain

        def render_internal_error(ctx, e):
            ctx.err_console.file.write(
                printable(
                    f"internal error: {type(e).__name__}: {e}. This is a bug in surgeon, not in your "
                    "model or command; rerun with --traceback and report the output."
                )
                + "\n"
            )
            write_json(
                ctx.console.file,
                {
                    "schema": "surgeon.error/1",
                    "error": "InternalError",
                    "message": f"{type(e).__name__}: {e}",
                    "exit_code": 3,
                },
            )
    else:
        from surgeon.report import make_consoles, render_error, render_internal_error

        console, err_console = make_consoles(console, err_console)
        for c in (console, err_console):
            c.on_broken_pipe = _raise_broken_pipe
        ctx = Context(console, err_console, json_mode)
    try:
        check_empty_paths(args)
        return int(args._module.run(args, ctx))
    except SurgeonError as e:
        if args.traceback:
            raise
        render_error(ctx, e)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: cleaned up while unwinding
        from surgeon.outputs import exit_code_for

        with contextlib.suppress(OSError, ValueError):
            err_console.print(_interrupted_text(e))
        return exit_code_for(e)
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE
    except Exception as e:  # a bug: say so plainly, never a bare traceback
        if args.traceback:
            raise
        render_internal_error(ctx, e)
        return ExitStatus.INTERNAL_ERROR


def entry_point() -> None:
    """The ``surgeon`` console script."""
    code = main()
    try:  # what is still buffered for a closed pipe fails here, not at exit
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = ExitStatus.BROKEN_PIPE
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
