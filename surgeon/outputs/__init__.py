"""The files a command reads and writes, checked together before any work, and writes
that replace files as one transaction.

Every command builds one :class:`FilePlan`: the files it reads (each model and each of
its external-data files, feeds, references, custom-op libraries, recipe files) and the
files it will write (the model, the weights file it may get, reports, saved tensors).
:meth:`FilePlan.check` refuses, in one message, every write that would land on a file
read or on another write, resolving symlinks, ``..`` and hard links; it also probes each
output folder with a temp file, so a folder that cannot be written is found before the
work. :func:`write_files` then replaces all of a result's files as one unit: each is
written to a temp file and fsynced, then all are renamed into place; if a rename fails,
the files already replaced are put back.

Signals: :func:`handle_signals` (installed by the CLI) turns SIGTERM and SIGHUP into
:class:`Terminated` (a ``KeyboardInterrupt``, like Ctrl-C), so the stack unwinds and
every ``finally`` and context manager cleans up. While files are being renamed into place
(or temp files removed) a signal is held back and raised right after, so a transaction is
never left half done.

The package: :mod:`~surgeon.outputs.plan` (the plan and the probes),
:mod:`~surgeon.outputs.writing` (atomic writes) and :mod:`~surgeon.outputs.signals`.
"""

from surgeon.outputs.plan import (
    FilePlan,
    data_file_name,
    probe_folder,
    probe_writable,
    same_file,
)
from surgeon.outputs.signals import (
    Terminated,
    exit_code_for,
    handle_signals,
    signals_deferred,
)
from surgeon.outputs.writing import transaction, write_files

__all__ = [
    "FilePlan",
    "Terminated",
    "data_file_name",
    "exit_code_for",
    "handle_signals",
    "probe_folder",
    "probe_writable",
    "same_file",
    "signals_deferred",
    "transaction",
    "write_files",
]
