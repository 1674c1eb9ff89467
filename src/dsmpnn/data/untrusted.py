"""Checks on files named or written by users, made before a file is opened or an array allocated.

- :func:`regular_file`: a path must be a regular file (a FIFO or a device such as ``/dev/zero`` would block or
  never end);
- :func:`confined_file`: a path listed in a file (a manifest's split entry, an AirfRANS case) must stay inside
  the directory of that file after symlinks are resolved;
- :func:`check_npz`: every array of an NPZ archive must fit in the bytes the archive really holds, read from the
  ``.npy`` headers (``numpy.lib.format``) before any array is loaded.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path, PurePath

import numpy as np
from numpy.lib import format as npy_format

from dsmpnn.errors import DatasetError, DsmpnnError
from dsmpnn.messages import brief

__all__ = ["MAX_DEFLATE_RATIO", "PATH_WIDTH", "check_npz", "confined_file", "regular_file"]

MAX_DEFLATE_RATIO = 1032
"""The largest expansion of DEFLATE (258 bytes from 2 bits, 1032:1): a member claiming more is not a real one."""

PATH_WIDTH = 400
"""Characters of a path from a file quoted in a message (a longer one is cut)."""

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | os.PathLike, what: str = "file", context: str = "",
                 error: type[DsmpnnError] = DatasetError) -> Path:
    """``Path(path)`` if it is (a symlink to) a regular file; else ``error`` saying what it is. ``what`` names the
    file's role, ``context`` (e.g. " (split entry ...)") ends the message."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: {what} does not exist{context}") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror}){context}") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise error(f"{path}: {what} is {kind}, expected a regular file{context}")
    return path


def confined_file(root: Path, entry: str, listed_in: Path, what: str = "entry", kind: str = "file") -> Path:
    """The regular file ``root/entry``, where ``entry`` (``what``, as written in ``listed_in``) must be a relative
    path that stays inside ``root`` once symlinks are resolved; a :class:`DatasetError` naming ``listed_in`` and the
    entry otherwise. ``kind`` names the file's role."""
    where = f"{listed_in}: {what} {brief(entry, PATH_WIDTH)}"
    if PurePath(entry).is_absolute():
        raise DatasetError(f"{where} is an absolute path; expected a path relative to {root}")
    inside = root.resolve()
    real = (inside / entry).resolve()
    if not real.is_relative_to(inside):
        raise DatasetError(f"{where} resolves to {real}, outside {inside}; expected a file inside that directory")
    return regular_file(real, kind, f" ({what} {brief(entry, PATH_WIDTH)} of {listed_in})")


def check_npz(path: Path) -> None:
    """Refuse an NPZ archive whose members claim more bytes than the file holds, before anything is loaded.

    Each member's uncompressed size must be at most its stored size (stored) or ``MAX_DEFLATE_RATIO`` times it
    (deflate, what ``numpy.savez_compressed`` writes); each ``.npy`` header's shape x item size must fit in its
    member; object (pickled) arrays are refused. A file that is not a readable zip archive passes: the reader
    that loads it next reports that in its own words.
    """
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                _check_member(path, z, info, size)
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return


def _check_member(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, size: int) -> None:
    """One member: its claimed sizes, then (for ``.npy``) its header against its size."""
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: MAX_DEFLATE_RATIO}.get(info.compress_type)
    if ratio is None:
        raise DatasetError(f"{path}: member {brief(info.filename)} uses zip compression {info.compress_type}, "
                           "expected stored or deflate (what numpy.savez and savez_compressed write)")
    if info.compress_size > size or info.file_size > ratio * info.compress_size:
        raise DatasetError(f"{path}: member {brief(info.filename)} claims {info.file_size:,} bytes from "
                           f"{info.compress_size:,} stored bytes in a file of {size:,} bytes; the archive is "
                           "corrupt or forged")
    if not info.filename.endswith(".npy"):
        return
    with z.open(info) as f:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise DatasetError(f"{path}: array {brief(info.filename[:-4])} is in .npy format version "
                               f"{version[0]}.{version[1]}, expected 1.0 or 2.0 (numpy.save)")
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read(f)
        header = f.tell()
    name = brief(info.filename[:-4])
    if dtype.hasobject:
        raise DatasetError(f"{path}: array {name} holds Python objects (dtype {dtype}), expected numbers; "
                           "dsmpnn never unpickles a file")
    need = math.prod(shape) * dtype.itemsize
    have = info.file_size - header
    if need > have:
        raise DatasetError(f"{path}: array {name} claims shape {shape} of {np.dtype(dtype).name} "
                           f"({need:,} bytes) but its member holds {have:,} bytes of data; expected a shape that "
                           "fits the file (it is corrupt or forged)")
