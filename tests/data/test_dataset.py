"""The on-disk dataset format: round trips, manifest validation, sample file validation, train-only stats."""

import json
from pathlib import Path

import numpy as np
import pytest

from dsmpnn.data.dataset import (Dataset, Field, Manifest, read_sample_file, statistics_split, write_dataset,
                                  write_sample_file)
from dsmpnn.data.sample import MeshSample
from dsmpnn.errors import DatasetError

INPUTS = [Field("a", "1"), Field("flag")]
TARGETS = [Field("u", "m/s")]


def make_sample(seed: int, n: int = 12, offset: float = 0.0, cells: bool = True) -> MeshSample:
    rng = np.random.default_rng(seed)
    tri = rng.integers(0, n, size=(5, 3)) if cells else None
    return MeshSample(rng.random((n, 2)), rng.standard_normal((n, 2)) + offset, rng.standard_normal((n, 1)) + offset,
                      tri, "triangle" if cells else None, name=f"m{seed}")


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    pairs = [("train", make_sample(0)), ("train", make_sample(1, cells=False)), ("val", make_sample(2)),
             ("test", make_sample(3))]
    write_dataset(tmp_path / "ds", pairs, INPUTS, TARGETS, "toy", description="a toy")
    return tmp_path / "ds"


def test_write_read_round_trip(tmp_path):
    written = {"train": [make_sample(0), make_sample(1, cells=False)], "val": [make_sample(2)]}
    m = write_dataset(tmp_path / "ds", [(k, s) for k, v in written.items() for s in v], INPUTS, TARGETS, "toy",
                      description="a toy")
    ds = Dataset(tmp_path / "ds")
    assert ds.manifest == Manifest.from_json(json.loads((tmp_path / "ds/manifest.json").read_text()), Path("x"))
    assert ds.manifest.input_fields == tuple(INPUTS) and ds.manifest.target_fields == tuple(TARGETS)
    assert ds.manifest.name == "toy" and ds.manifest.description == "a toy" and ds.manifest.dim == 2
    assert ds.manifest.splits == m.splits and set(m.splits) == {"train", "val"}
    for split, samples in written.items():
        for orig, back in zip(samples, ds.load_split(split), strict=True):
            np.testing.assert_array_equal(back.pos, orig.pos)
            np.testing.assert_array_equal(back.x, orig.x)
            np.testing.assert_array_equal(back.y, orig.y)
            if orig.cells is None:
                assert back.cells is None and back.cell_type is None
            else:
                np.testing.assert_array_equal(back.cells, orig.cells)
                assert back.cell_type == orig.cell_type
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.tmp")]


def test_statistics_are_computed_on_train_only(tmp_path):
    train = [make_sample(0), make_sample(1)]
    others = [("val", make_sample(2, offset=100.0)), ("test", make_sample(3, offset=-50.0))]
    m = write_dataset(tmp_path / "ds", [("train", s) for s in train] + others, INPUTS, TARGETS, "toy")
    for key in ("pos", "x", "y"):
        values = np.concatenate([getattr(s, key) for s in train])
        np.testing.assert_allclose(m.stats[key].mean, values.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(m.stats[key].std, values.std(axis=0), rtol=1e-10)
    assert Dataset(tmp_path / "ds").manifest.stats["y"].mean == pytest.approx(m.stats["y"].mean)


def test_constant_channel_gets_unit_std(tmp_path):
    s = make_sample(0)
    s.x[:, 1] = 1.0
    m = write_dataset(tmp_path / "ds", [("train", s)], INPUTS, TARGETS, "toy")
    assert m.stats["x"].std[1] == 1.0 and m.stats["x"].mean[1] == 1.0


def test_write_requires_a_sample_and_leaves_nothing(tmp_path):
    with pytest.raises(DatasetError, match="no sample was assigned to the 'train' split"):
        write_dataset(tmp_path / "ds", [], INPUTS, TARGETS, "toy")
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_without_train_split_takes_its_statistics_from_its_samples(tmp_path):
    """A test-only dataset (to evaluate a trained run on, which normalises with its own statistics)."""
    samples = [make_sample(0), make_sample(1)]
    pairs = [("test", s) for s in samples]
    assert statistics_split(split for split, _ in pairs) == "test"
    assert statistics_split(["val", "test"]) == "all" and statistics_split(["test", "train"]) == "train"
    m = write_dataset(tmp_path / "ds", pairs, INPUTS, TARGETS, "toy", stats_on="test")
    assert m.stats_on == "test" and list(m.splits) == ["test"]
    np.testing.assert_allclose(m.stats["x"].mean, np.concatenate([s.x for s in samples]).mean(axis=0))
    back = Dataset(tmp_path / "ds").manifest
    assert back.stats_on == "test" and back == m


def test_mixed_cell_blocks_round_trip_and_old_single_block_files_still_read(tmp_path):
    from dsmpnn.data.sample import sample_from_blocks

    pos = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1.0]])
    blocks = [("triangle", np.array([[0, 1, 4], [0, 4, 3]])), ("quad", np.array([[1, 2, 5, 4]])),
              ("line", np.array([[0, 1], [1, 2]]))]
    s = sample_from_blocks(pos, np.ones((6, 3)), np.ones((6, 1)), blocks, name="mix")
    write_sample_file(tmp_path / "mix.npz", s)
    with np.load(tmp_path / "mix.npz") as z:
        assert sorted(z.files) == ["cell_type", "cell_type_1", "cell_type_2", "cells", "cells_1", "cells_2", "pos",
                                   "x", "y"]
    back = read_sample_file(tmp_path / "mix.npz")
    assert [(k, c.tolist()) for k, c in back.cell_blocks] == [(k, c.tolist()) for k, c in blocks]
    assert back.cell_type == "triangle" and back.cells.shape == (2, 3)
    np.savez(tmp_path / "old.npz", pos=pos, x=np.ones((6, 3)), y=np.ones((6, 1)), cells=blocks[0][1],
             cell_type=np.array("triangle"))  # a sample written before mixed blocks
    assert [k for k, _ in read_sample_file(tmp_path / "old.npz").cell_blocks] == ["triangle"]
    with np.load(tmp_path / "mix.npz") as z:
        arrays = {k: z[k] for k in z.files if k not in ("cells_1", "cell_type_1")}
    np.savez(tmp_path / "gap.npz", **arrays)
    with pytest.raises(DatasetError, match=r"gap\.npz: cell blocks \[2\] are stored, but block 1 is missing"):
        read_sample_file(tmp_path / "gap.npz")
    arrays.update(cells_1=np.array([[0, 1, 99]]), cell_type_1=np.array("triangle"))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=r"bad\.npz: sample 'bad': cell block 1: field 'cells' has 1 node "):
        read_sample_file(tmp_path / "bad.npz")


def test_write_rejects_wrong_field_count(tmp_path):
    with pytest.raises(DatasetError, match="sample 'm0'.*expected 3 input"):
        write_dataset(tmp_path / "ds", [("train", make_sample(0))], INPUTS + [Field("c")], TARGETS, "toy")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_an_existing_file_or_non_empty_directory(tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(DatasetError, match="file: output path exists and is not a directory"):
        write_dataset(tmp_path / "file", [("train", make_sample(0))], INPUTS, TARGETS, "toy")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_text("keep")
    with pytest.raises(DatasetError, match="dir: output directory exists and is not empty"):
        write_dataset(tmp_path / "dir", [("train", make_sample(0))], INPUTS, TARGETS, "toy")
    assert (tmp_path / "file").read_text() == "keep" and (tmp_path / "dir" / "a.txt").read_text() == "keep"
    write_dataset(tmp_path / "dir", [("train", make_sample(0))], INPUTS, TARGETS, "toy", overwrite=True)
    assert not (tmp_path / "dir" / "a.txt").exists() and Dataset(tmp_path / "dir").manifest.name == "toy"


# --- manifest validation --------------------------------------------------------------------------------------


def edit(obj: dict, path: str, value=None, delete: bool = False) -> None:
    *parents, last = path.split(".")
    for p in parents:
        obj = obj[p]
    if delete:
        del obj[last]
    else:
        obj[last] = value


MANIFEST_CASES = {
    "missing dim": (dict(path="dim", delete=True), ["no key 'dim'"]),
    "missing stats": (dict(path="stats", delete=True), ["no key 'stats'"]),
    "missing stats.x": (dict(path="stats.x", delete=True), ["no key 'stats.x'"]),
    "dim wrong type": (dict(path="dim", value="2"), ["'dim' is str", "expected int"]),
    "splits wrong type": (dict(path="splits", value=["a"]), ["'splits' is list", "expected dict"]),
    "spacing wrong type": (dict(path="spacing", value="small"), ["'spacing' is str", "expected int or float"]),
    "wrong dim": (dict(path="dim", value=4), ["'dim' is 4", "expected 2 or 3"]),
    "stats size mismatch": (dict(path="stats.x.mean", value=[0.0, 0.0, 0.0]),
                            ["'stats.x'", "3/2 entries, expected 2"]),
    "stats not finite": (dict(path="stats.y.std", value=[0.0]), ["'stats.y'", "std > 0"]),
    "bad field": (dict(path="input_fields", value=[{"unit": "1"}]), ["'input_fields[0]'"]),
    "no fields": (dict(path="target_fields", value=[]), ["'target_fields' is empty"]),
    "bad split list": (dict(path="splits.train", value=[1, 2]), ["'splits.train'", "list of sample file names"]),
    "wrong format": (dict(path="format", value="other"), ["'format' is 'other'"]),
    "wrong version": (dict(path="version", value=99), ["'version' is 99"]),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_manifest_errors_name_the_file_and_key(dataset_dir, case):
    change, fragments = MANIFEST_CASES[case]
    path = dataset_dir / "manifest.json"
    obj = json.loads(path.read_text())
    edit(obj, **change)
    path.write_text(json.dumps(obj))
    with pytest.raises(DatasetError) as err:
        Dataset(dataset_dir)
    msg = str(err.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_manifest_not_json_or_absent(dataset_dir, tmp_path):
    path = dataset_dir / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset(dataset_dir)
    path.unlink()
    with pytest.raises(DatasetError, match="no manifest"):
        Dataset(dataset_dir)
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset(tmp_path / "nowhere")


def test_missing_split(dataset_dir):
    with pytest.raises(DatasetError, match=r"no split 'holdout', the manifest has \['test', 'train', 'val'\]") as err:
        Dataset(dataset_dir).load_split("holdout")
    assert str(dataset_dir / "manifest.json") in str(err.value)


# --- sample file validation -----------------------------------------------------------------------------------


def first_file(dataset_dir: Path) -> Path:
    return dataset_dir / Dataset(dataset_dir).split("train")[0]


def rewrite(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(path, **arrays)


def _missing_x(p):
    rewrite(p, x=None)


def _missing_y(p):
    rewrite(p, y=None)


def _wrong_x_columns(p):
    rewrite(p, x=np.zeros((12, 3)))


def _wrong_y_rows(p):
    rewrite(p, y=np.zeros((11, 1)))


def _wrong_dim(p):
    rewrite(p, pos=np.random.default_rng(0).random((12, 3)))  # distinct nodes, one coordinate too many


def _nan(p):
    with np.load(p) as z:
        y = z["y"].copy()
    y[3, 0] = np.nan
    rewrite(p, y=y)


def _truncated(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _not_npz(p):
    p.write_text("hello")


def _deleted(p):
    p.unlink()


SAMPLE_CASES = {
    "missing array x": (_missing_x, ["missing array 'x'", "['cell_type', 'cells', 'pos', 'y']"]),
    "missing array y": (_missing_y, ["missing array 'y'", "['u']"]),
    "wrong x columns": (_wrong_x_columns, ["field 'x' has shape (12, 3)", "expected [N, 2]", "['a', 'flag']"]),
    "wrong y rows": (_wrong_y_rows, ["field 'y' has shape (11, 1)", "N=12"]),
    "wrong dim": (_wrong_dim, ["field 'pos' has shape (12, 3)", "expected [N, 2]"]),
    "nan": (_nan, ["field 'y'", "1 NaN/Inf"]),
    "truncated": (_truncated, ["cannot read NPZ file", "truncated"]),
    "not an npz": (_not_npz, ["cannot read NPZ file"]),
    "nonexistent": (_deleted, ["sample file does not exist"]),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_file_errors_name_the_file_and_field(dataset_dir, case):
    damage, fragments = SAMPLE_CASES[case]
    path = first_file(dataset_dir)
    damage(path)
    with pytest.raises(DatasetError) as err:
        Dataset(dataset_dir).load_split("train")
    msg = str(err.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_read_sample_file_without_manifest_allows_missing_targets(tmp_path):
    s = make_sample(0)
    np.savez(tmp_path / "p.npz", pos=s.pos, x=s.x)
    back = read_sample_file(tmp_path / "p.npz")
    assert back.y is None and back.name == "p"
    np.testing.assert_array_equal(back.x, s.x)
