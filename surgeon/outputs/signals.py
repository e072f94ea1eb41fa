"""Signals during a command: SIGTERM and SIGHUP become :class:`Terminated` (a
``KeyboardInterrupt``, like Ctrl-C) so the stack unwinds and every ``finally`` cleans up;
:func:`signals_deferred` holds a signal back through a critical section (renaming files
into place) and raises it right after."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised in the main thread so the stack unwinds.

    A ``KeyboardInterrupt`` so that code which already cleans up after Ctrl-C (and only
    ``BaseException`` handlers) treats it the same way.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_held: list[int] = []  # signals that arrived while deferred
_defer_depth = 0


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum, frame) -> None:
    if _defer_depth > 0:
        _held.append(signum)
        return
    _raise_for(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM/SIGHUP (when :func:`handle_signals` is active) for a
    short critical section; the first one held is raised when it ends."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if _defer_depth == 0 and _held:
            signum = _held[0]
            _held.clear()
            _raise_for(signum)


def _handled_signals() -> list[int]:
    return [
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    ]


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGINT into KeyboardInterrupt and SIGTERM/SIGHUP into :class:`Terminated`
    for the duration (main thread only; elsewhere it does nothing), then restore the
    previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in _handled_signals():
        try:
            previous[signum] = signal.signal(signum, _handler)
        except (OSError, ValueError):  # not settable here
            pass
    try:
        yield
    finally:
        _held.clear()
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def exit_code_for(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, as shells report a process ended by a signal."""
    return 128 + getattr(interrupt, "signum", int(getattr(signal, "SIGINT", 2)))
