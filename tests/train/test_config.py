import dataclasses
import math
import time
import typing
from pathlib import Path

import pytest

from dsmpnn.errors import ConfigError
from dsmpnn.train.config import MAX_CONFIG_BYTES, Config, Rule, load_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=7", "train.lr=5e-4", "model.kernel_hidden=[16, 8]",
                             "graph.max_neighbors=null", "graph.radius=1"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 5e-4
    assert cfg.model.kernel_hidden == [16, 8] and cfg.graph.max_neighbors is None
    assert isinstance(cfg.graph.radius, float) and cfg.graph.radius == 1.0
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  hidden: 8\ntrain:\n  lr: 1e-3\n")
    cfg = load_config(p)
    assert cfg.model.hidden == 8 and cfg.train.lr == 1e-3


@pytest.mark.parametrize("text,match", [
    ("model:\n  hiden: 8\n", r"unknown key\(s\) \['hiden'\] in section 'model'; valid keys are"),
    ("modle:\n  hidden: 8\n", r"unknown key\(s\) \['modle'\] in the top level"),
    ("model:\n  hidden: eight\n", r"model.hidden is str 'eight', expected int"),
    ("model:\n  hidden: true\n", r"model.hidden is bool True, expected int"),
    ("model:\n  aggr: max\n", r"model.aggr is 'max', expected one of \['mean', 'sum'\]"),
    ("graph:\n  edge_features: gkn\n", r"graph.edge_features is 'gkn', expected one of \['geometry', 'inputs'\]"),
    ("graph:\n  radius: -1\n", r"graph.radius is -1.0, expected a finite number > 0"),
    ("graph:\n  max_neighbors: 2.5\n", r"graph.max_neighbors is float 2.5, expected int or null"),
    ("train: 3\n", r"section 'train' must be a mapping"),
    ("- a\n- b\n", r"expected a mapping of sections"),
    ("model: [unclosed\n", r"not valid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("item,match", [("train.epochs", "section.key=value"), ("epochs=3", "section.key"),
                                        ("train.epochs=-1", r"train.epochs is -1, expected an integer in \[1, ")])
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [item])


@pytest.mark.parametrize("items,match", [
    (["model.hidden=abc"], r"^override 'model.hidden=abc': model.hidden is str 'abc', expected int"),
    (["model.hiden=8"], r"^override 'model.hiden=8': unknown key\(s\) \['hiden'\] in section 'model'"),
    (["modle.hidden=8"], r"^override 'modle.hidden=8': unknown key\(s\) \['modle'\] in the top level"),
    (["graph.radius=1", "graph.radius=-1"], r"^override 'graph.radius=-1': graph.radius is -1.0"),
    (["distributed.overlap=0.1", "distributed.halo_hops=2"],
     r"\.yaml with override 'distributed.overlap=0.1', override 'distributed.halo_hops=2': distributed.overlap"),
])
def test_bad_override_of_a_file_names_the_override(tmp_path, items, match):
    """A bad value set on the command line is reported against the override, not the (good) config file."""
    p = tmp_path / "good.yaml"
    p.write_text("model:\n  hidden: 8\ngraph:\n  radius: 0.5\n")
    with pytest.raises(ConfigError, match=match):
        load_config(p, items)
    p.write_text("model:\n  hidden: x\n")  # a bad value of the file itself is still the file's
    with pytest.raises(ConfigError, match=r"good.yaml: model.hidden is str 'x'"):
        load_config(p, ["graph.radius=1"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def _just_outside(rule: Rule) -> list:
    """Values a key with ``rule`` must refuse: each side of its range (or a value not among its choices)."""
    if rule.kind == "choice":
        return ["banana"] if isinstance(rule.choices[0], str) else [2]
    if rule.kind == "list":
        return [[1] * (rule.hi + 1), [0], *([[]] if rule.lo > 0 else [])]
    if rule.kind == "int":
        return [rule.lo - 1, rule.hi + 1]
    below = rule.lo if rule.lo_open else math.nextafter(rule.lo, -math.inf)
    return [below, math.nan, math.inf] + ([] if rule.hi is None else [math.nextafter(rule.hi, math.inf)])


def _keys():
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        for f in dataclasses.fields(cls):
            yield section.name, cls, f


def test_every_key_declares_its_range_and_accepts_its_default():
    for section, cls, f in _keys():
        assert isinstance(f.metadata.get("rule"), Rule), f"{section}.{f.name} has no Rule"
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        cfg = load_config(None, [f"{section}.{f.name}={'null' if default is None else default}"])
        assert getattr(getattr(cfg, section), f.name) == default


@pytest.mark.parametrize("section,key,value", [(s, f.name, v) for s, _, f in _keys()
                                               for v in _just_outside(f.metadata["rule"])])
def test_every_key_refuses_a_value_just_outside_its_range(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}.* expected "):
        Config.from_dict({section: {key: value}})


@pytest.mark.parametrize("value,match", [
    ("-1", r"train.seed is -1, expected an integer in \[0, 4294967295\]"),
    (str(2**70), r"train.seed is 1180591620717411303424, expected"),
])
def test_seed_range(value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"train.seed={value}"])


@pytest.mark.parametrize("text,match", [
    ("a: &a [1, 2]\nb: *a\n", r"line 2: YAML alias \*a is not allowed"),
    ("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 4\n", r"line 4: duplicate key 'epochs'"),
    ("train: {epochs: 3}\ntrain: {lr: 0.1}\n", r"line 2: duplicate key 'train'"),
    ("model:\n  kernel_hidden: " + "[" * 40 + "]" * 40 + "\n", r"nested deeper than 32 levels"),
    ("model:\n  kernel_hidden: [" + ", ".join(["1"] * 20_000) + "]\n", r"more than 10,000 YAML values"),
    ("train:\n  seed: " + "9" * 5000 + "\n", r"not valid YAML \(Exceeds the limit"),
])
def test_yaml_that_a_config_never_needs_is_refused(tmp_path, text, match):
    """Refused by the bound named in the message (aliases, depth, value count, scalar length), which is what keeps
    the reader's work bounded; a wall-clock assertion would fail on a loaded machine, not on a slow reader."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_alias_bomb_is_refused_at_the_first_alias(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="line 2: YAML alias"):  # line 2: before any expansion
        load_config(p)


def test_config_file_size_utf8_and_kind(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="more than the 1,048,576 dsmpnn reads"):
        load_config(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"model:\n  act: r\xe9lu\n")
    with pytest.raises(ConfigError, match=r"config file is not valid UTF-8 text \(byte 0xe9 at byte offset 15\)"):
        load_config(latin)
    with pytest.raises(ConfigError, match="config file is a directory, expected a regular file"):
        load_config(tmp_path)


def test_error_messages_cut_huge_values_before_formatting():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"model": {"hidden": "x" * 10**7}})
    with pytest.raises(ConfigError) as e2:
        Config.from_dict({"model": {"kernel_hidden": list(range(10**5))}})
    assert time.perf_counter() - t0 < 5  # ~0.05 s; formatting the whole values would take far longer
    assert len(str(e.value)) < 200 and len(str(e2.value)) < 200


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """The configs in configs/ (the README's and the paper table's) are valid as shipped."""
    cfg = load_config(path)
    assert cfg.graph.radius > 0 and cfg.train.epochs >= 1
