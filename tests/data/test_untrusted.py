"""The checks on user files below the CLI: NPZ member sizes, the strict text/JSON reader, short reprs."""

import struct
import time

import numpy as np
import pytest

from dsmpnn.data.textfile import brief, read_json, read_text
from dsmpnn.data.untrusted import MAX_DEFLATE_RATIO, check_npz
from dsmpnn.errors import ConfigError, DatasetError


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_check_npz_accepts_what_numpy_writes(tmp_path, save):
    save(tmp_path / "a.npz", pos=np.zeros((1000, 2)), cells=np.arange(12).reshape(3, 4), cell_type=np.array("quad"))
    check_npz(tmp_path / "a.npz")


def test_check_npz_refuses_a_member_claiming_more_than_deflate_can_give(tmp_path):
    """The central directory says 1 GB uncompressed for a few hundred compressed bytes."""
    path = tmp_path / "a.npz"
    np.savez_compressed(path, pos=np.zeros((1000, 2)))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")  # central directory entry; uncompressed size at offset 24
    raw[at + 24: at + 28] = struct.pack("<I", 10**9)
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"member 'pos\.npy' claims 1,000,000,000 bytes from \d+ stored bytes"):
        check_npz(path)
    assert MAX_DEFLATE_RATIO == 1032


def test_check_npz_leaves_a_non_zip_to_the_reader(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"not a zip")
    check_npz(tmp_path / "a.npz")


def test_read_text_bounds_size_and_names_the_bad_byte(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"a": 1}')
    with pytest.raises(ConfigError, match=r"m\.json: config has 8 bytes, more than the 4 dsmpnn reads"):
        read_text(path, "config", ConfigError, limit=4)
    path.write_bytes(b'{"a": "\xe9t\xe9"}')
    with pytest.raises(DatasetError, match="byte 0xe9 at byte offset 7"):
        read_json(path)
    with pytest.raises(DatasetError, match="file is a directory, expected a regular file"):
        read_json(tmp_path)
    with pytest.raises(DatasetError, match="nothing.json: file does not exist"):
        read_json(tmp_path / "nothing.json")


def test_read_json_refuses_duplicate_keys_at_any_depth(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"a": {"b": 1, "b": 2}}')
    with pytest.raises(DatasetError, match="has the key 'b' twice"):
        read_json(path, "manifest")


def test_brief_is_short_and_cheap_for_huge_values():
    huge = "x" * 50_000_000
    t0 = time.perf_counter()
    text = brief([huge, {"k": list(range(10**6))}])
    assert time.perf_counter() - t0 < 5  # ~0.01 s; a repr of the whole values takes far longer
    assert len(text) < 200 and "..." in text
