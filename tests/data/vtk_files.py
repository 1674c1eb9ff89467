"""Writers of small VTK files in the layouts real tools produce, for the reader and importer tests."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import numpy as np

_VTK_TYPES = {np.dtype("float32"): "Float32", np.dtype("float64"): "Float64", np.dtype("int32"): "Int32",
              np.dtype("int64"): "Int64"}


def _blob(a: np.ndarray, compressed: bool, header: str) -> tuple[bytes, bytes]:
    """(header bytes, data bytes) of one array as VTK writes them."""
    h = np.uint32 if header == "UInt32" else np.uint64
    raw = np.ascontiguousarray(a).tobytes()
    if not compressed:
        return np.array([len(raw)], h).tobytes(), raw
    block = 64  # several blocks, so the block loop is exercised
    chunks = [zlib.compress(raw[i:i + block]) for i in range(0, len(raw), block)] or [zlib.compress(b"")]
    last = len(raw) - block * (len(chunks) - 1)
    head = np.array([len(chunks), block, last] + [len(c) for c in chunks], h).tobytes()
    return head, b"".join(chunks)


def write_vtp(path: Path, points: np.ndarray, point_data: dict[str, np.ndarray], fmt: str = "ascii",
              compressed: bool = False, header: str = "UInt32", joint_base64: bool = False) -> None:
    """A PolyData file with ``points [N, 3]``, point data and a polyline through the points.

    ``fmt``: ``ascii``, ``binary`` (inline base64; header encoded on its own unless ``joint_base64``),
    ``raw`` (appended raw) or ``appended64`` (appended base64).
    """
    n = len(points)
    arrays = [("Points", points.astype(np.float32), "Points")] + [
        (k, np.asarray(v), "PointData") for k, v in point_data.items()]
    lines = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1).astype(np.int64)
    arrays += [("connectivity", lines.ravel(), "Lines"), ("offsets", np.arange(2, 2 * n - 1, 2, dtype=np.int64), "Lines")]
    appended, offset = b"", 0
    xml = {"Points": [], "PointData": [], "Lines": []}
    for name, a, where in arrays:
        comps = a.shape[1] if a.ndim == 2 else 1
        attrs = f'type="{_VTK_TYPES[a.dtype]}" Name="{name}" NumberOfComponents="{comps}"'
        if fmt == "ascii":
            text = " ".join(repr(float(v)) if a.dtype.kind == "f" else str(int(v)) for v in a.ravel())
            xml[where].append(f'<DataArray {attrs} format="ascii">{text}</DataArray>')
            continue
        head, data = _blob(a, compressed, header)
        if fmt == "binary":
            enc = (base64.b64encode(head + data) if joint_base64 and not compressed
                   else base64.b64encode(head) + base64.b64encode(data))
            xml[where].append(f'<DataArray {attrs} format="binary">{enc.decode()}</DataArray>')
        else:
            chunk = head + data if fmt == "raw" else base64.b64encode(head) + base64.b64encode(data)
            xml[where].append(f'<DataArray {attrs} format="appended" offset="{offset}"/>')
            appended += chunk
            offset += len(chunk)
    comp = ' compressor="vtkZLibDataCompressor"' if compressed else ""
    body = (f'<?xml version="1.0"?>\n<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" '
            f'header_type="{header}"{comp}>\n<PolyData>\n<Piece NumberOfPoints="{n}" NumberOfVerts="0" '
            f'NumberOfLines="{n - 1}" NumberOfStrips="0" NumberOfPolys="0">\n'
            f'<PointData>{"".join(xml["PointData"])}</PointData>\n<Points>{"".join(xml["Points"])}</Points>\n'
            f'<Lines>{"".join(xml["Lines"])}</Lines>\n</Piece>\n</PolyData>\n')
    out = body.encode()
    if fmt in ("raw", "appended64"):
        enc = "raw" if fmt == "raw" else "base64"
        out += f'<AppendedData encoding="{enc}">\n_'.encode() + appended + b"\n</AppendedData>\n"
    out += b"</VTKFile>\n"
    Path(path).write_bytes(out)


VTK_CELL_TYPES = {"vertex": 1, "line": 3, "triangle": 5, "quad": 9, "tetra": 10, "hexahedron": 12, "wedge": 13,
                  "pyramid": 14}
_VTK_TYPES_MORE = {**_VTK_TYPES, np.dtype("uint8"): "UInt8"}


def write_vtu(path: Path, points: np.ndarray, blocks: list[tuple[str, np.ndarray]],
              point_data: dict[str, np.ndarray], cell_data: dict[str, np.ndarray] | None = None,
              fmt: str = "appended64") -> None:
    """An UnstructuredGrid file laid out as VTK 9.7.2's ``vtkXMLUnstructuredGridWriter`` writes it by default
    (``fmt="appended64"``: version 0.1, header UInt32, zlib compression, every array appended as base64 with its
    header encoded on its own, Float32 points, Int64 connectivity/offsets, UInt8 types, padded attributes), or with
    ``SetDataModeToAscii`` (``fmt="ascii"``: the same file with inline ascii arrays, not compressed). ``cell_data``
    holds one array over all cells, in block order. Not meshio's writer: a second writer for the import tests."""
    conn = np.concatenate([c.ravel() for _, c in blocks]).astype(np.int64)
    offsets = np.cumsum(np.concatenate([[c.shape[1]] * len(c) for _, c in blocks])).astype(np.int64)
    types = np.concatenate([[VTK_CELL_TYPES[t]] * len(c) for t, c in blocks]).astype(np.uint8)
    sections = {"PointData": [(k, np.asarray(v)) for k, v in point_data.items()],
                "CellData": [(k, np.asarray(v)) for k, v in (cell_data or {}).items()],
                "Points": [("Points", np.asarray(points, dtype=np.float32))],
                "Cells": [("connectivity", conn), ("offsets", offsets), ("types", types)]}
    appended, offset, xml = b"", 0, {k: [] for k in sections}
    for where, arrays in sections.items():
        for name, a in arrays:
            comps = f' NumberOfComponents="{int(np.prod(a.shape[1:]))}"' if a.ndim > 1 else ""
            attrs = f'type="{_VTK_TYPES_MORE[a.dtype]}" Name="{name}"{comps}'
            if fmt == "ascii":
                text = " ".join(repr(float(v)) if a.dtype.kind == "f" else str(int(v)) for v in a.ravel())
                xml[where].append(f'        <DataArray {attrs} format="ascii">\n          {text}\n'
                                  "        </DataArray>\n")
                continue
            head, data = _blob(a, True, "UInt32")
            chunk = base64.b64encode(head) + base64.b64encode(data)
            xml[where].append(f'        <DataArray {attrs} format="appended" RangeMin="" RangeMax="" '
                              f'offset="{offset}"{" " * 17}/>\n')
            appended += chunk
            offset += len(chunk)
    comp = ' compressor="vtkZLibDataCompressor"'
    text = (f'<?xml version="1.0"?>\n<VTKFile type="UnstructuredGrid" version="0.1" byte_order="LittleEndian" '
            f'header_type="UInt32"{comp}>\n  <UnstructuredGrid>\n'
            f'    <Piece NumberOfPoints="{len(points)}"{" " * 20}NumberOfCells="{len(types)}"{" " * 19}>\n')
    for where in ("PointData", "CellData", "Points", "Cells"):
        text += f"      <{where}>\n{''.join(xml[where])}      </{where}>\n"
    text += "    </Piece>\n  </UnstructuredGrid>\n"
    out = text.encode()
    if fmt != "ascii":
        out += b'  <AppendedData encoding="base64">\n   _' + appended + b"\n  </AppendedData>\n"
    Path(path).write_bytes(out + b"</VTKFile>\n")
