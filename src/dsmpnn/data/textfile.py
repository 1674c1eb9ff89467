"""Reading text and JSON files that come from users: bounded in size and nesting, strict UTF-8, and every failure
a one-line :class:`~dsmpnn.errors.DsmpnnError` naming the file and the place (byte offset, line:column).

Used for dataset manifests and the AirfRANS ``manifest.json``; ``error`` picks the exception class, so a reader of
configs or run files can raise its own (:class:`~dsmpnn.errors.ConfigError`, :class:`~dsmpnn.errors.CheckpointError`).
"""

from __future__ import annotations

import json
import os

from dsmpnn.data.untrusted import regular_file
from dsmpnn.errors import DatasetError, DsmpnnError
from dsmpnn.messages import brief

__all__ = ["MAX_TEXT_BYTES", "read_json", "read_text"]

MAX_TEXT_BYTES = 256 * 2**20
"""The largest text file read (256 MiB): a manifest of a million samples is about 40 MB."""



def read_text(path: str | os.PathLike, what: str = "file", error: type[DsmpnnError] = DatasetError,
              limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``; refuses a larger file than ``limit`` bytes or invalid UTF-8
    (naming the byte offset). ``what`` names the file's role in messages ("manifest", "config")."""
    path = regular_file(path, what, error=error)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(limit + 1) if size <= limit else b""
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if size > limit or len(raw) > limit:
        raise error(f"{path}: {what} has {max(size, len(raw)):,} bytes, more than the {limit:,} dsmpnn reads for it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not valid UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset "
                    f"{e.start})") from None


def read_json(path: str | os.PathLike, what: str = "file", error: type[DsmpnnError] = DatasetError,
              limit: int = MAX_TEXT_BYTES) -> object:
    """The JSON value in ``path`` (see :func:`read_text`); refuses invalid JSON (naming line:column), nesting deeper
    than Python's recursion limit allows and an object with a key given twice."""
    text = read_text(path, what, error, limit)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise error(f"{path}: {what} is not valid JSON at line {e.lineno}:{e.colno} ({e.msg})") from None
    except RecursionError:
        raise error(f"{path}: {what} nests JSON arrays/objects too deeply to read (about a thousand levels or "
                    "more); expected a shallow JSON document") from None
    except _DuplicateKey as e:
        raise error(f"{path}: {what} has the key {brief(e.args[0])} twice in one JSON object; keep one") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out
