"""Reading text and JSON files that come from users: bounded in size and nesting, strict UTF-8, and every failure
a one-line :class:`~dsmpnn.errors.DsmpnnError` naming the file and the place (byte offset, line:column).

Used for dataset manifests and the AirfRANS ``manifest.json``; ``error`` picks the exception class, so a reader of
configs or run files can raise its own (:class:`~dsmpnn.errors.ConfigError`, :class:`~dsmpnn.errors.CheckpointError`).
:func:`brief` cuts a value before formatting it, so that an error message about a huge value stays short and cheap.
"""

from __future__ import annotations

import json
import os
import reprlib
from pathlib import Path

from dsmpnn.errors import DatasetError, DsmpnnError

__all__ = ["MAX_TEXT_BYTES", "brief", "read_json", "read_text"]

MAX_TEXT_BYTES = 256 * 2**20
"""The largest text file read (256 MiB): a manifest of a million samples is about 40 MB."""



def brief(value: object, width: int = 60) -> str:
    """A short ``repr`` of ``value``: strings and other values cut to about ``width`` characters, lists and dicts
    to their first items, with ``...``; built without the full repr, so cheap for a huge value."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = width
    short.maxlevel = 3
    return short.repr(value)


def read_text(path: str | os.PathLike, what: str = "file", error: type[DsmpnnError] = DatasetError,
              limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``; refuses a larger file than ``limit`` bytes or invalid UTF-8
    (naming the byte offset). ``what`` names the file's role in messages ("manifest", "config")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} does not exist or is not a regular file")
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise error(f"{path}: {what} is larger than {limit // 2**20} MiB, the most dsmpnn reads for a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not valid UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset "
                    f"{e.start}); save it as UTF-8") from None


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
