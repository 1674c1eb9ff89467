"""A small reader for VTK XML PolyData (``.vtp``) files: points and point data, nothing else.

meshio reads ``.vtu`` but not ``.vtp``; this reader covers what VTK/ParaView/pyvista write for PolyData:

- ``DataArray format="ascii"``: whitespace-separated numbers;
- ``format="binary"``: base64 inline, a header (``header_type`` ``UInt32`` or ``UInt64``, default ``UInt32``)
  then the data, uncompressed (header ``[nbytes]``, encoded on its own or together with the data) or
  zlib-compressed (``compressor="vtkZLibDataCompressor"``, header ``[nblocks, block_size, last_block_size,
  compressed sizes...]`` encoded on its own, then the blocks);
- ``format="appended"``: ``<AppendedData encoding="raw">`` (bytes after the ``_`` marker) or
  ``encoding="base64"`` (each array base64-encoded on its own), with the same header and compression rules.

Byte order from ``byte_order`` (``LittleEndian`` default). Other compressors (LZ4, LZMA) and other VTK XML types
are rejected with an error that names the file and the array.
"""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np

from dsmpnn.errors import DatasetError

__all__ = ["read_vtp"]

_TYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4", "UInt32": "u4",
          "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8"}


def read_vtp(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Points ``[N, 3]`` and point data ``{name: [N] or [N, C]}`` of a VTK XML PolyData file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file does not exist")
    raw = path.read_bytes()
    # the raw appended block is binary: parse the XML before it, and keep its bytes apart
    appended = b""
    m = re.search(rb"<AppendedData[^>]*>\s*_", raw)
    if m:
        end = raw.rfind(b"</AppendedData>")
        appended = raw[m.end(): end if end > 0 else len(raw)]
        raw = raw[: m.end() - 1] + b"</AppendedData></VTKFile>"
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not a valid VTK XML file ({e})") from None
    if root.tag != "VTKFile" or root.get("type") != "PolyData":
        raise DatasetError(f"{path}: VTK XML type is {root.get('type')!r}, expected 'PolyData' (.vtp)")
    ctx = _Context(path, root, appended, m is not None)
    piece = root.find("PolyData/Piece")
    if piece is None:
        raise DatasetError(f"{path}: no <PolyData><Piece> element")
    n = int(piece.get("NumberOfPoints", "-1"))
    arr = piece.find("Points/DataArray")
    if arr is None:
        raise DatasetError(f"{path}: no <Points><DataArray>")
    points = ctx.array(arr, "Points").astype(np.float64)
    if n < 1 or points.size != 3 * n:
        raise DatasetError(f"{path}: <Points> has {points.size} values, expected NumberOfPoints={n} x 3")
    points = points.reshape(n, 3)
    data = {}
    for a in piece.findall("PointData/DataArray"):
        name = a.get("Name", "")
        values = ctx.array(a, name)
        comps = int(a.get("NumberOfComponents", "1"))
        if values.size != n * comps:
            raise DatasetError(f"{path}: point data '{name}' has {values.size} values, expected "
                               f"{n} points x {comps} components")
        data[name] = values.reshape(n, comps) if comps > 1 else values
    return points, data


class _Context:
    """Decoding state of one file: header integer type, byte order, compressor and the appended block."""

    def __init__(self, path: Path, root: ET.Element, appended: bytes, has_appended: bool) -> None:
        self.path = path
        header = root.get("header_type", "UInt32")
        if header not in ("UInt32", "UInt64"):
            raise DatasetError(f"{path}: header_type {header!r} is not supported, expected UInt32 or UInt64")
        self.order = ">" if root.get("byte_order", "LittleEndian") == "BigEndian" else "<"
        self.header = np.dtype(_TYPES[header]).newbyteorder(self.order)
        self.compressor = root.get("compressor", "")
        if self.compressor not in ("", "vtkZLibDataCompressor"):
            raise DatasetError(f"{path}: compressor {self.compressor!r} is not supported, expected none or "
                               "vtkZLibDataCompressor (re-save the file uncompressed or with zlib)")
        enc = root.find("AppendedData")
        self.appended_encoding = enc.get("encoding", "raw") if has_appended and enc is not None else ""
        self.appended = appended if self.appended_encoding == "raw" else b"".join(appended.split())

    def array(self, a: ET.Element, name: str) -> np.ndarray:
        """The flat values of one ``DataArray`` in native byte order."""
        kind = a.get("type", "")
        if kind not in _TYPES:
            raise DatasetError(f"{self.path}: array '{name}' has type {kind!r}, expected one of {sorted(_TYPES)}")
        dtype = np.dtype(_TYPES[kind]).newbyteorder(self.order)
        fmt = a.get("format", "ascii")
        try:
            if fmt == "ascii":
                return np.array((a.text or "").split(), dtype=np.float64).astype(dtype.newbyteorder("="))
            if fmt == "binary":
                data = self._base64("".join((a.text or "").split()).encode())
            elif fmt == "appended" and self.appended_encoding in ("raw", "base64"):
                blob = self.appended[int(a.get("offset", "0")):]
                data = self._raw(blob) if self.appended_encoding == "raw" else self._base64(blob)
            elif fmt == "appended":
                raise DatasetError(f"{self.path}: array '{name}' is appended but the file has no AppendedData "
                                   f"with encoding 'raw' or 'base64' (found {self.appended_encoding!r})")
            else:
                raise DatasetError(f"{self.path}: array '{name}' has format {fmt!r}, expected ascii, binary or "
                                   "appended")
            return np.frombuffer(data, dtype).astype(dtype.newbyteorder("="))
        except (ValueError, zlib.error, IndexError, binascii.Error) as e:
            raise DatasetError(f"{self.path}: cannot decode array '{name}' (format {fmt}, "
                               f"compressor {self.compressor or 'none'}): {e}") from None

    def _sizes(self, head: bytes) -> tuple[int, np.ndarray]:
        """Header bytes -> (uncompressed byte count, compressed block sizes or empty)."""
        h = self.header.itemsize
        if not self.compressor:
            return int(np.frombuffer(head[:h], self.header)[0]), np.zeros(0, np.int64)
        nblocks = int(np.frombuffer(head[:h], self.header)[0])
        items = np.frombuffer(head[: h * (3 + nblocks)], self.header).astype(np.int64)
        if len(items) != 3 + nblocks:
            raise ValueError(f"truncated compression header (expected {3 + nblocks} integers)")
        return -1, items[3:]

    def _inflate(self, blocks: bytes, sizes: np.ndarray) -> bytes:
        out, pos = [], 0
        for s in sizes:
            out.append(zlib.decompress(blocks[pos: pos + int(s)]))
            pos += int(s)
        return b"".join(out)

    def _raw(self, blob: bytes) -> bytes:
        """Appended raw bytes: header then data (or compressed blocks)."""
        h = self.header.itemsize
        nbytes, sizes = self._sizes(blob)
        if not self.compressor:
            if len(blob) < h + nbytes:
                raise ValueError(f"truncated data: {len(blob) - h} bytes, expected {nbytes}")
            return blob[h: h + nbytes]
        start = h * (3 + len(sizes))
        return self._inflate(blob[start: start + int(sizes.sum())], sizes)

    def _base64(self, text: bytes) -> bytes:
        """Base64 text: the header is encoded on its own (VTK) or together with uncompressed data."""
        h = self.header.itemsize
        if not self.compressor:
            hc = _b64len(h)
            nbytes, _ = self._sizes(base64.b64decode(text[:hc]))
            if text[hc - 1: hc] == b"=":  # header encoded on its own, then the data
                data = base64.b64decode(text[hc: hc + _b64len(nbytes)])
            else:
                data = base64.b64decode(text[: _b64len(h + nbytes)])[h:]
            if len(data) < nbytes:
                raise ValueError(f"truncated data: {len(data)} bytes, expected {nbytes}")
            return data[:nbytes]
        nblocks = int(np.frombuffer(base64.b64decode(text[: _b64len(h)])[:h], self.header)[0])
        hc = _b64len(h * (3 + nblocks))
        _, sizes = self._sizes(base64.b64decode(text[:hc]))
        return self._inflate(base64.b64decode(text[hc: hc + _b64len(int(sizes.sum()))]), sizes)


def _b64len(n: int) -> int:
    """Characters of the base64 encoding of ``n`` bytes (with padding)."""
    return 4 * ((n + 2) // 3)
