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
``add_arguments(parser)`` and ``run(args, ctx) -> ExitStatus``, which ends with
``return ctx.finish(result)`` (JSON or the result type's renderer, and the status from
``result.passed``), and imports nothing heavy at module level, so ``surgeon --help``
imports neither onnxruntime nor rich. All output, argparse's help, ``--version`` and usage
errors included, goes to the consoles ``main`` was given; JSON goes through
:mod:`surgeon.jsonout`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys

from surgeon._version import __version__
from surgeon.errors import ExitStatus, SurgeonError, printable
from surgeon.jsonout import (
    error_document,
    internal_error_document,
    usage_error_document,
    write_json,
)

__all__ = ["COMMANDS", "Context", "ExitStatus", "build_parser", "entry_point", "main"]

# One explicit table, in the order `surgeon --help` lists them.
COMMANDS: dict[str, str] = {
    "debug": "surgeon.commands.debug",
    "inspect": "surgeon.commands.inspect",
    "diff": "surgeon.commands.diff",
    "blame": "surgeon.commands.blame",
    "fp16": "surgeon.commands.fp16",
    "extract": "surgeon.commands.extract",
    "edit": "surgeon.commands.edit",
    "rename": "surgeon.commands.rename",
    "reshape-io": "surgeon.commands.reshape_io",
    "check-dynamic": "surgeon.commands.check_dynamic",
    "fold": "surgeon.commands.fold",
    "convert": "surgeon.commands.convert",
    "rewrite": "surgeon.commands.rewrite",
    "nms": "surgeon.commands.nms",
    "merge": "surgeon.commands.merge",
    "run": "surgeon.commands.run",
    "recipes": "surgeon.commands.recipes",
}


class Context:
    """What a command needs from the CLI: consoles, the output mode, and :meth:`finish`."""

    def __init__(self, console, err_console, json_mode: bool):
        self.console = console
        self.err_console = err_console
        self.json = json_mode

    def emit_json(self, data) -> None:
        """Write one JSON document to stdout (see :mod:`surgeon.jsonout`)."""
        write_json(self.console.file, data)

    def finish(self, result) -> ExitStatus:
        """Show a command's result and return its exit status: the one way a command ends.

        With ``--json`` the result's ``to_dict()`` is written; otherwise the renderer
        that :data:`surgeon.report.dispatch.RENDERERS` lists for the result's type draws
        it. ``result.passed`` decides the status: SUCCESS, else VERIFICATION_FAILED.

        Args:
            result: A typed result (a DiffReport, a DynamicCheck, or one of
                :mod:`surgeon.outcomes`); whatever the renderer needs besides the
                library result (was a file written?) travels on it.
        """
        if self.json:
            self.emit_json(result.to_dict())
        else:
            from surgeon.report.dispatch import render

            render(self.console, result)
        return ExitStatus.SUCCESS if result.passed else ExitStatus.VERIFICATION_FAILED

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


def _internal_error_text(e: BaseException) -> str:
    return (
        f"{type(e).__name__}: {e}. This is a bug in surgeon, not in your model or command; "
        "rerun with --traceback and report the output."
    )


def _render_error_plain(ctx, error) -> None:
    lines = [f"error: {error.message}"] + [f"  - {p}" for p in error.problems]
    if error.hint:
        lines.append(error.hint)
    ctx.err_console.file.write("\n".join(map(printable, lines)) + "\n")


def _render_internal_error_plain(ctx, text: str) -> None:
    ctx.err_console.file.write(printable(f"internal error: {text}") + "\n")


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


class _UsageExit(SystemExit):
    """argparse refused the command line: exit 2, with the exact message for --json.

    A SystemExit, as argparse's own, so a caller of ``build_parser().parse_args`` sees
    what argparse would raise."""

    def __init__(self, message: str):
        super().__init__(ExitStatus.BAD_INPUT)
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that writes help, version and usage errors to the streams it was
    given (``stdout``/``stderr``; None: the process's, looked up when writing), so that
    ``main(argv, console, err_console)`` owns all of its output."""

    def __init__(self, *args, stdout=None, stderr=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._stdout = stdout
        self._stderr = stderr
        self._argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)  # for error()'s hints
        return super().parse_known_args(args, namespace)

    def _hint(self, message: str) -> str | None:
        """Close matches for a mistyped command or option (``debgu``, ``--tapp``)."""
        from surgeon.errors import did_you_mean

        commands = next(
            (a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)),
            {},
        )
        wrong = re.match(r"argument COMMAND: invalid choice: '(.*?)'", message)
        if wrong and commands:
            return did_you_mean(wrong.group(1), commands)
        if not message.startswith("unrecognized arguments:"):
            return None
        # The options of the command the arguments name (its parser reports nothing).
        parser = next((commands[t] for t in self._argv if t in commands), self)
        options = [o for a in parser._actions for o in a.option_strings]
        hints = []
        for token in message.split(":", 1)[1].split():
            option = token.split("=", 1)[0]
            hint = did_you_mean(option, options) if option.startswith("-") else None
            if hint:
                hints.append(f"`{option}`: {hint}")
        return "; ".join(hints) or None

    def _print_message(self, message, file=None):
        # Every argparse write passes here (help, usage, --version, error); it names
        # sys.stdout or sys.stderr, which stand for the streams this parser was given.
        if file is None or file is sys.stdout:
            file = self._stdout or sys.stdout
        elif file is sys.stderr:
            file = self._stderr or sys.stderr
        if message:
            file.write(message)
            file.flush()

    def error(self, message):  # one paragraph, exit 2
        try:
            hint = self._hint(message)
        except Exception:  # noqa: BLE001 - a hint must never break the usage error itself
            hint = None
        if hint:
            message = f"{message}; {hint}"
        self.print_usage(sys.stderr)
        # argparse quotes the user's arguments (`unrecognized arguments: ...`) raw: an
        # ESC or newline in one must not reach the terminal.
        self._print_message(printable(f"{self.prog}: error: {message}") + "\n", sys.stderr)
        raise _UsageExit(f"{self.prog}: {message}")  # exact, for the JSON document


# Arguments that name files, by their argparse dest, as the user spells them.
_PATH_ARGUMENTS = {
    "output": "-o",
    "save": "--save",
    "html": "--html",
    "node_data": "--node-data",
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


def build_parser(stdout=None, stderr=None, *, only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, every command's options included.

    Args:
        stdout: Where help and ``--version`` go (default: ``sys.stdout`` when written).
        stderr: Where usage errors go (default: ``sys.stderr`` when written).
        only: Give options to this command alone; the others are bare names (their
            modules not even imported). For an argv that names this command first.
    """
    streams = {"stdout": stdout, "stderr": stderr}
    parser = _Parser(
        prog="surgeon",
        description="ONNX graph surgery and debugging; every edit is verified against the original with onnxruntime.",
        epilog="Exit codes: 0 success, 1 verification failed, 2 bad usage or input, 3 internal error, "
        "130 interrupted (143 SIGTERM, 129 SIGHUP), 141 output pipe closed. "
        "Run `surgeon COMMAND --help` for a command's options.",
        **streams,
    )
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parent = _common_parent()
    # Importing every command module and building its options took 60-80 ms of each
    # command's start; with `only`, 20 ms.
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, **streams)  # argv names another command: never parsed
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            parents=[parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **streams,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None, console=None, err_console=None) -> int:
    """Run the CLI and return the exit status (never raises for user errors).

    Everything it writes goes to the two consoles: results and ``--json`` documents,
    ``--help`` and ``--version`` to ``console``; messages, usage errors and progress to
    ``err_console``.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
        console: rich Console for results (default: stdout).
        err_console: rich Console for messages and progress (default: stderr).

    Returns:
        An :class:`ExitStatus` member.
    """
    given = sys.argv[1:] if argv is None else argv
    if not given or any(a in ("-h", "--help", "--version") for a in given):
        # Help and the version write no file, so they need no signal handling: its import
        # (surgeon.outputs, with the file plan behind it) was a third of `surgeon --help`.
        # (A SIGTERM then ends the process as it would any program.)
        try:
            return _main(argv, console, err_console)
        except KeyboardInterrupt as e:
            return _interrupted_status(e)
    from surgeon.outputs import handle_signals

    try:
        with handle_signals():
            return _main(argv, console, err_console)
    except KeyboardInterrupt as e:  # before a command ran (parsing), or while reporting
        with contextlib.suppress(OSError, ValueError):
            err = err_console.file if err_console is not None else sys.stderr
            err.write(_interrupted_text(e) + "\n")
        return _interrupted_status(e)
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE


def _interrupted_status(e: KeyboardInterrupt) -> ExitStatus:
    """130, 143 or 129: the signal that ended the command (handle_signals catches only
    SIGINT, SIGTERM and SIGHUP, each an ExitStatus member)."""
    from surgeon.outputs import exit_code_for

    return ExitStatus(exit_code_for(e))


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
    out = console.file if console is not None else None
    err = err_console.file if err_console is not None else None
    given = sys.argv[1:] if argv is None else list(argv)
    # A misspelt command, a stray option or `surgeon --help`: the full parser.
    only = given[0] if given and given[0] in COMMANDS else None
    parser = build_parser(out, err, only=only)
    try:
        args = parser.parse_args(argv)
    except _UsageExit as e:
        args_given = sys.argv[1:] if argv is None else argv
        if "--json" in args_given:
            write_json(out or sys.stdout, usage_error_document(e.message, ExitStatus.BAD_INPUT))
        return ExitStatus.BAD_INPUT
    except SystemExit as e:  # --help or --version, written already
        return ExitStatus.SUCCESS if not e.code else ExitStatus.BAD_INPUT
    if not getattr(args, "command", None):
        parser.print_help()
        return ExitStatus.BAD_INPUT
    json_mode = bool(getattr(args, "json", False))
    if json_mode and console is None and err_console is None:
        console, err_console = _PlainConsole(sys.stdout), _PlainConsole(sys.stderr)
        render_error, render_internal_error = _render_error_plain, _render_internal_error_plain
    else:
        from surgeon.report import make_consoles, render_error, render_internal_error

        console, err_console = make_consoles(console, err_console)
        for c in (console, err_console):
            c.on_broken_pipe = _raise_broken_pipe
    ctx = Context(console, err_console, json_mode)
    try:
        check_empty_paths(args)
        status = args._module.run(args, ctx)
        if not isinstance(status, ExitStatus):  # every command ends with ctx.finish()
            raise TypeError(f"command {args.command} returned {status!r}, not an ExitStatus")
        return status
    except SurgeonError as e:
        if args.traceback:
            raise
        render_error(ctx, e)
        if ctx.json:
            ctx.emit_json(error_document(e))
        return ExitStatus(e.exit_code)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: cleaned up while unwinding
        with contextlib.suppress(OSError, ValueError):
            err_console.print(_interrupted_text(e))
        return _interrupted_status(e)
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE
    # The internal-error boundary, the one blind catch surgeon keeps on purpose: whatever
    # a bug raises (onnx and onnxruntime raise arbitrary types too) becomes a one-paragraph
    # message and exit 3 instead of a bare traceback; --traceback re-raises it.
    except Exception as e:  # noqa: BLE001 - the CLI's boundary for bugs, see above
        if args.traceback:
            raise
        render_internal_error(ctx, _internal_error_text(e))
        if ctx.json:
            ctx.emit_json(internal_error_document(e, ExitStatus.INTERNAL_ERROR))
        return ExitStatus.INTERNAL_ERROR


def entry_point() -> None:
    """The ``surgeon`` console script."""
    code = main()
    try:  # what is still buffered for a closed pipe fails here, not at exit
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        code = ExitStatus.BROKEN_PIPE
    _exit(int(code))


def _exit(code: int) -> None:
    """End the process with ``code`` without tearing the interpreter down.

    Tearing down frees every object one at a time (protos, arrays, onnxruntime's
    objects, every module), which the OS does at once: it was 75 ms of the wall time of
    ``surgeon debug`` on a YOLOv8n-size model (95 against 20 ms from the end of main()
    to the end of the process, measured). What an exit must still do is done here:
    the atexit handlers run (weakref finalizers, such as a temp folder's cleanup;
    coverage's data file) and the standard streams are flushed. With another Python
    thread alive (daemons aside: an interrupted run's reference, see
    ``surgeon.verification``, is stopped with the process), or an interpreter without the
    hook that runs the handlers, Python exits as usual.
    """
    import atexit
    import threading

    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if run_handlers is None or any(not t.daemon for t in others):
        sys.exit(code)
    run_handlers()
    for stream in (sys.stdout, sys.stderr):
        # What the handlers wrote; a closed pipe loses it quietly, as stdout above.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry_point()
