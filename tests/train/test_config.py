import pytest

from dsmpnn.errors import ConfigError
from dsmpnn.train.config import Config, load_config


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
    ("graph:\n  radius: -1\n", r"graph.radius must be > 0"),
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
                                        ("train.epochs=-1", "positive")])
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [item])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
