"""Property-based fuzzing of what users hand to ``dsmpnn train``: a valid dataset manifest, NPZ sample or config
file with one random change. Every outcome must be one of

- exit 0: a run directory with a checkpoint;
- exit 2: one ``dsmpnn train: error:`` line and no run directory (nothing written);
- exit 1 only for a diverging run (a value the statistics allow, but whose square overflows): one error
  line saying so;

never a traceback, never a hang (each case runs under an alarm). The examples are derandomised, so CI runs the
same cases every time; ``HYPOTHESIS_PROFILE=fuzz-long`` (see ``settings`` below) explores more.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dsmpnn.cli import main
from dsmpnn.data import Dataset
from tests.helpers.cli_cases import TINY, alarm

CASE_SECONDS = 60

settings.register_profile("fuzz", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz-long", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))

# Values a careless user or a hostile file might put anywhere: small and extreme numbers, wrong types, nesting.
SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([2**31, 2**63, 2**70, -2**63])
           | st.sampled_from([0.0, -0.0, 0.5, 1e-300, 1e300, float("nan"), float("inf"), -float("inf")])
           | st.text(max_size=12) | st.sampled_from(["../x.npz", "/dev/zero", "/etc/passwd", "samples", "", "\x00"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=3), max_leaves=8)




def run_train(data: Path, out: Path, capsys, config: Path | None = None, overrides: list[str] = TINY) -> None:
    """``dsmpnn train`` once; asserts one of the allowed outcomes."""
    argv = ["train", "--no-progress", "--data", str(data), "--out", str(out),
            *(["--config", str(config)] if config else []), *overrides, "train.epochs=1"]
    capsys.readouterr()
    with alarm(CASE_SECONDS):
        code = main(argv)
    err = capsys.readouterr().err
    event(f"exit {code}")  # pytest --hypothesis-show-statistics shows how often each outcome came
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("dsmpnn train: warning: ")]
    if code == 0:
        assert any((out / "checkpoints").glob("ckpt_*.pt")), "exit 0 without a checkpoint"
        return
    assert len(errors) == 1 and errors[0].startswith("dsmpnn train: error: "), err
    if code == 1:
        assert "training diverged" in errors[0], err
        return
    assert code == 2, err
    assert not out.exists(), f"exit 2 left {sorted(p.name for p in out.iterdir())} behind"


@pytest.fixture(scope="module")
def scratch(shared):
    with tempfile.TemporaryDirectory(prefix="dsmpnn-fuzz-") as tmp:
        yield Path(tmp), shared[0]


def fresh_copy(scratch: tuple[Path, Path]) -> tuple[Path, Path]:
    """A new copy of the good dataset and an output path that does not exist yet."""
    tmp, data = scratch
    case = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copytree(data, case / "data")
    return case / "data", case / "run"


def leaves(obj, path=()):
    """Every (path, value) of a JSON-like tree, containers included."""
    yield path, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from leaves(v, (*path, k))


def mutate(tree, draw_path: int, action: str, value):
    """``tree`` with the node at index ``draw_path`` (of :func:`leaves`) replaced by ``value``, deleted, or given
    a new key."""
    nodes = list(leaves(tree))
    path, _ = nodes[draw_path % len(nodes)]
    if not path:
        return value if action == "replace" else tree
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent["extra_key"] = value
    else:
        parent[path[-1]] = value
    return tree


ACTIONS = st.sampled_from(["replace", "replace", "delete", "add"])


@FUZZ
@given(where=st.integers(0, 10**6), action=ACTIONS, value=VALUES)
def test_fuzzed_manifest_gives_exit_0_or_2(scratch, capsys, where, action, value):
    data, out = fresh_copy(scratch)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps(mutate(manifest, where, action, value)))
    run_train(data, out, capsys)


ARRAYS = hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, np.complex128,
                                           np.dtype("<U3")]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=70))


@FUZZ
@given(key=st.sampled_from(["pos", "x", "y", "cells", "cell_type", "extra"]),
       change=st.sampled_from(["array", "delete", "element", "truncate", "flip"]), array=ARRAYS,
       number=st.sampled_from([np.nan, np.inf, -np.inf, 1e308, 1e30, -0.0, 7.0, -1.0]),
       where=st.integers(0, 10**6))
def test_fuzzed_sample_gives_exit_0_or_2(scratch, capsys, key, change, array, number, where):
    data, out = fresh_copy(scratch)
    path = data / Dataset(data).split("train")[0]
    if change in ("truncate", "flip"):
        raw = bytearray(path.read_bytes())
        if change == "truncate":
            raw = raw[: where % len(raw)]
        else:
            raw[where % len(raw)] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if change == "delete":
            arrays.pop(key, None)
        elif change == "array":
            arrays[key] = array
        elif key in arrays and arrays[key].size and arrays[key].dtype.kind in "fi":
            a = arrays[key].astype(np.float64)
            a.flat[where % a.size] = number
            arrays[key] = a
        path.unlink()
        np.savez(path, **arrays)
    run_train(data, out, capsys)


def base_config() -> dict:
    cfg: dict = {}
    for item in [*TINY, "train.epochs=1"]:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        cfg.setdefault(section, {})[name] = yaml.safe_load(value)
    return cfg


@FUZZ
@given(where=st.integers(0, 10**6), action=ACTIONS, value=VALUES, raw=st.none() | st.binary(max_size=64))
def test_fuzzed_config_gives_exit_0_or_2(scratch, capsys, where, action, value, raw):
    data, out = fresh_copy(scratch)
    config = out.parent / "c.yaml"
    if raw is not None:  # bytes that may not even be text
        config.write_bytes(raw)
    else:
        config.write_text(yaml.safe_dump(mutate(base_config(), where, action, value), allow_unicode=True))
    run_train(data, out, capsys, config=config, overrides=[])
