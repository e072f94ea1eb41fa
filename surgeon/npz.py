"""Reading ``.npz`` files of input values safely, and byte sizes.

An ``.npz`` is a zip of ``.npy`` arrays. Everything here reads the ``.npy`` headers first
(nothing decompressed) so that sizes are known, and refused above a limit, before any
value is inflated; pickled object arrays are never read.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError, UsageError

# The most feed data surgeon makes or reads by default: far above what test inputs of
# real models need, far below what takes a workstation down.
DEFAULT_MAX_FEED_BYTES = 4 * 2**30


def parse_size(text: str) -> int:
    """A byte count from ``4G``, ``512M``, ``1.5GiB``, ``1000000`` (binary units: K = 1024).

    Raises:
        UsageError: The text is not a size.
    """
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    cleaned = text.strip().upper().replace(" ", "")
    for suffix in ("IB", "B"):
        if cleaned.endswith(suffix) and cleaned[: -len(suffix)][-1:] in units:
            cleaned = cleaned[: -len(suffix)]
            break
    unit = cleaned[-1:] if cleaned[-1:] in units and cleaned[-1:] else ""
    number = cleaned[: -len(unit)] if unit else cleaned
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise UsageError(
            f"cannot read the size `{text}`: expected e.g. 4G, 512M or 1000000 (bytes)"
        )
    return int(value * units[unit])


def format_bytes(count: int) -> str:
    """``4294967296`` -> ``"4 GiB"``; exact for small counts, 3 digits for large ones."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            return f"{value:.3g} {unit}"
    return f"{count} bytes"  # unreachable


@dataclass(frozen=True)
class NpzEntry:
    """One array of an ``.npz``, as its ``.npy`` header describes it (nothing decompressed).

    Attributes:
        key: The array's name (the member name without ``.npy``).
        shape: Its shape.
        dtype: Its dtype.
        fortran_order: Whether the values are stored column-major.
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes its values take once read (a Python int: no overflow)."""
        return math.prod(self.shape) * self.dtype.itemsize


def _npz_error(path, why: str) -> SurgeonError:
    return SurgeonError(f"{path} is not a readable .npz file ({why})")


def _read_npy_header(stream, path, member: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and order from the start of a ``.npy`` stream; the stream is left at
    the first byte of the values. Only the header is read (and decompressed)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:  # (3, 0): a UTF-8 header; numpy's reader for it is not public
            shape, fortran, dtype = fmt._read_array_header(stream, version)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, AttributeError) as e:
        raise _npz_error(path, f"`{member}` has no valid .npy header: {e}") from None
    if dtype.hasobject:
        # Object arrays are pickles, which can run code: never read from a file.
        raise _npz_error(path, f"`{member}` holds Python objects (a pickle), which are not read")
    return tuple(int(d) for d in shape), dtype, bool(fortran)


def _open_npz(path):
    from surgeon.loading import open_regular_file

    fh, _ = open_regular_file(path, "an .npz file", SurgeonError)
    try:
        return fh, zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        fh.close()
        raise _npz_error(path, f"not a zip archive: {e}") from None


def _npz_members(path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise _npz_error(path, f"member `{info.filename}` is not a .npy array")
        key = info.filename[: -len(".npy")]
        if key in members:
            raise _npz_error(path, f"it holds `{key}` twice")
        members[key] = info
    return members


def read_npz_index(path: str | Path) -> dict[str, NpzEntry]:
    """What an ``.npz`` holds, from each member's ``.npy`` header only.

    Nothing beyond the headers is decompressed, so a compressed file that would inflate
    to terabytes costs no more to inspect than a small one.

    Raises:
        SurgeonError: The file is missing, not a regular file, not a zip of ``.npy``
            arrays, or holds pickled objects.
    """
    fh, archive = _open_npz(path)
    with fh, archive:
        index = {}
        for key, info in _npz_members(path, archive).items():
            try:
                with archive.open(info) as stream:
                    shape, dtype, fortran = _read_npy_header(stream, path, info.filename)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as e:
                raise _npz_error(path, f"`{info.filename}`: {e}") from None
            index[key] = NpzEntry(key, shape, dtype, fortran)
        return index


def _too_large(path, entries: Iterable[NpzEntry], limit: int) -> SurgeonError:
    entries = sorted(entries, key=lambda e: -e.nbytes)
    total = sum(e.nbytes for e in entries)
    return SurgeonError(
        f"{path} holds {format_bytes(total)} of arrays, more than the limit of {format_bytes(limit)}",
        problems=[
            f"`{e.key}`: {list(e.shape)} {e.dtype.name} = {format_bytes(e.nbytes)}"
            for e in entries[:5]
        ],
        hint="Nothing was decompressed. If the file is what you meant, raise the feed size limit.",
    )


def load_npz(
    path: str | Path,
    keys: Iterable[str] | None = None,
    *,
    max_bytes: int | None = DEFAULT_MAX_FEED_BYTES,
) -> dict[str, np.ndarray]:
    """Read an ``.npz`` file into a dict, with a clear error for anything unreadable.

    Args:
        keys: Read only these arrays (default: all).
        max_bytes: Refuse, before decompressing anything, when the arrays to read take
            more than this many bytes together (None: no limit).

    Raises:
        SurgeonError: The file cannot be read, or holds more than ``max_bytes``.
    """
    fh, archive = _open_npz(path)
    with fh, archive:
        members = _npz_members(path, archive)
        wanted = list(members) if keys is None else [k for k in keys if k in members]
        headers = {}
        for key in wanted:
            with archive.open(members[key]) as stream:
                headers[key] = NpzEntry(key, *_read_npy_header(stream, path, members[key].filename))
        if max_bytes is not None and sum(e.nbytes for e in headers.values()) > max_bytes:
            raise _too_large(path, headers.values(), max_bytes)
        out = {}
        for key in wanted:
            entry = headers[key]
            try:
                with archive.open(members[key]) as stream:
                    # The header is read again from the stream the values come from, so
                    # the size checked above is the size read, whatever the file does.
                    shape, dtype, fortran = _read_npy_header(stream, path, members[key].filename)
                    if (shape, dtype, fortran) != (entry.shape, entry.dtype, entry.fortran_order):
                        raise _npz_error(path, f"`{key}` changed while it was read")
                    out[key] = _read_values(stream, path, entry)
            except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as e:
                raise _npz_error(path, f"`{key}`: {e}") from None
        return out


def _read_values(stream, path, entry: NpzEntry) -> np.ndarray:
    """Exactly ``entry.nbytes`` bytes from ``stream`` as an array: a member whose data is
    longer than its header says is never inflated past that."""
    buffer = bytearray(entry.nbytes)
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(view[filled : filled + 2**24])
        if not got:
            raise _npz_error(path, f"`{entry.key}` is truncated: {filled} of {entry.nbytes} bytes")
        filled += got
    array = np.frombuffer(buffer, dtype=entry.dtype)
    order = "F" if entry.fortran_order else "C"
    return array.reshape(entry.shape, order=order)
