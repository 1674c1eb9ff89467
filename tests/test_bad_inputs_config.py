"""Bad configuration and command-line values: YAML that a config never needs (aliases, duplicate keys, deep or
huge documents), files that are not UTF-8 or not files, values outside the range of a config key or option, and
sizes that cannot fit. Every case exits 2 with one line, no traceback, nothing written; the hostile YAML cases
answer in well under a second."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from tests.helpers.cli_cases import NEW, RESUME, TRAIN, Case, World, config_file, run_case

BOMB = ('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
BOMB_VALUE = "[&a [1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a], [*b, *b, *b, *b, *b, *b, *b, *b]]"
CONFIG = [*TRAIN, "--config", "{tmp}/c.yaml"]
GENERATE = ["generate", "darcy", "--no-progress", "--out", "{tmp}/o"]
EVALUATE = ["evaluate", "{tmp}/run"]
PARTITION = ["partition", "--data", "{data}", "--nproc", "2"]


def config_bytes(data: bytes) -> Callable[[World], dict]:
    """Write ``data`` (any bytes) as {tmp}/c.yaml."""
    def setup(w: World) -> dict:
        (w.tmp / "c.yaml").write_bytes(data)
        return {}
    return setup


def run_config_bytes(data: bytes) -> Callable[[World], dict]:
    """A copy of the run ({tmp}/run) whose config.yaml is ``data``."""
    def setup(w: World) -> dict:
        path = w.copy_run() / "config.yaml"
        path.write_bytes(data)
        return {"file": str(path)}
    return setup


def config_dir(w: World) -> dict:
    (w.tmp / "c.yaml").mkdir()
    return {}


def copy_run(w: World) -> dict:
    w.copy_run()
    return {}


def override(key: str, value: str, *fragments: str) -> Case:
    return Case([*TRAIN, f"{key}={value}"], [f"{key} is ", *fragments], NEW)


def option(argv: list[str], *fragments: str, outputs: list[str] = ("{tmp}/o",)) -> Case:
    return Case(argv, list(fragments), list(outputs))


CASES = {
    # YAML a config never needs
    "alias bomb in a config file": Case(CONFIG, ["{tmp}/c.yaml: line 2: YAML alias *a is not allowed"], NEW,
                                        config_file(BOMB)),
    "alias bomb in an override": Case([*TRAIN, f"model.kernel_hidden={BOMB_VALUE}"],
                                      ["override 'model.kernel_hidden=", "YAML alias *a is not allowed"], NEW),
    "alias bomb in RUN/config.yaml": Case(EVALUATE, ["{file}: line 2: YAML alias"], ["{tmp}/run"],
                                          run_config_bytes(BOMB.encode())),
    "duplicate key in a config file": Case(CONFIG, ["{tmp}/c.yaml: line 4: duplicate key 'epochs'"], NEW,
                                           config_file("train:\n  epochs: 3\n  lr: 0.01\n  epochs: 30\n")),
    "duplicate section in a config file": Case(CONFIG, ["{tmp}/c.yaml: line 3: duplicate key 'model'"], NEW,
                                               config_file("model:\n  hidden: 8\nmodel:\n  layers: 2\n")),
    "duplicate key in an override": Case([*TRAIN, "model.kernel_hidden={{a: 1, a: 2}}"],
                                         ["override 'model.kernel_hidden={{a: 1, a: 2}}': line 1: duplicate key 'a'"],
                                         NEW),
    "nesting too deep": Case(CONFIG, ["{tmp}/c.yaml: line 2: nested deeper than 32 levels"], NEW,
                             config_file("model:\n  kernel_hidden: " + "[" * 500 + "]" * 500 + "\n")),
    "too many YAML values": Case(CONFIG, ["{tmp}/c.yaml: line 2: more than 10,000 YAML values"], NEW,
                                 config_file("model:\n  kernel_hidden: [" + ", ".join(["8"] * 20_000) + "]\n")),
    "config file too large": Case(CONFIG, ["{tmp}/c.yaml: config file has 2,000,002 bytes, more than the 1,048,576"], NEW,
                                  config_file("#" + "x" * 2_000_000 + "\n")),
    "integer of 5000 digits": Case(CONFIG, ["{tmp}/c.yaml: not valid YAML", "4300 digits"], NEW,
                                   config_file("train:\n  seed: " + "7" * 5000 + "\n")),
    # files that are not UTF-8 text or not files
    "config file not UTF-8": Case(CONFIG, ["{tmp}/c.yaml: config file is not valid UTF-8 text (byte 0xe9 at byte "
                                           "offset 15)"], NEW, config_bytes(b"model:\n  act: r\xe9lu\n")),
    "RUN/config.yaml not UTF-8 (evaluate)": Case(EVALUATE, ["{file}: config file is not valid UTF-8 text (byte 0xff "
                                                            "at byte offset 0"], ["{tmp}/run"],
                                                 run_config_bytes(b"\xff\xfe")),
    "RUN/config.yaml not UTF-8 (predict)": Case(["predict", "{tmp}/run", "--input", "{sample}", "--out",
                                                 "{tmp}/p.npz"], ["{file}: config file is not valid UTF-8 text"],
                                                ["{tmp}/run", "{tmp}/p.npz"],
                                                run_config_bytes(b"model:\n  hidden: 8\xc3\n")),
    "RUN/config.yaml not UTF-8 (resume)": Case(RESUME, ["{file}: config file is not valid UTF-8 text"], ["{tmp}/run"],
                                               run_config_bytes(b"train: {epochs: \x80}\n")),
    "config path is a directory": Case(CONFIG, ["{tmp}/c.yaml: config file is a directory, expected a regular "
                                               "file"], NEW, config_dir),
    # a huge value is cut before it is formatted
    "huge value in a message": Case([*TRAIN, "model.act=" + "x" * 4000], ["model.act is 'xxxx", "...",
                                                                          "expected one of ['relu'"], NEW),
    "huge unknown key": Case(CONFIG, ["unknown key(s) ['kkkk"], NEW,
                             config_file("model:\n  ? " + "k" * 100_000 + "\n  : 1\n")),
    # every config key has a range
    "seed negative": override("train.seed", "-1", "expected an integer in [0, 4294967295]"),
    "seed 2**70": override("train.seed", str(2**70), "1180591620717411303424, expected an integer in [0, "),
    "threads negative": override("train.threads", "-3", "expected an integer in [1, 4096] or null"),
    "weight decay negative": override("train.weight_decay", "-5", "-5.0, expected a number >= 0 and <= 1000"),
    "grad clip negative": override("train.grad_clip", "-1", "expected a finite number > 0 or null"),
    "edge features unknown": override("graph.edge_features", "coefficient",
                                      "graph.edge_features is 'coefficient', expected one of ['geometry', 'inputs']"),
    "warmup negative": override("train.warmup_epochs", "-5", "expected an integer in [0, 1000000]"),
    "lr infinite": override("train.lr", "inf", "inf, expected a number > 0 and <= 1000"),
    "lr NaN": override("train.lr", ".nan", "nan, expected a number > 0"),
    "kernel width zero": override("model.kernel_hidden", "[8, 0]", "expected a list of 1 to 16 items, each an "
                                                                   "integer in [1, 65536]"),
    "sample nodes zero": override("graph.sample_nodes", "0", "expected an integer in [1, 1000000000]"),
    "plot samples negative": override("eval.plot_samples", "-1", "expected an integer in [0, 1000]"),
    "overlap negative": override("distributed.overlap", "-1", "expected a finite number >= 0 or null"),
    "range checked in RUN/config.yaml": Case(EVALUATE, ["{file}: train.seed is -1"], ["{tmp}/run"],
                                             run_config_bytes(b"train:\n  seed: -1\n")),
    # every option has a range, and sizes that cannot fit are refused before work
    "generate seed negative": option([*GENERATE, "--seed", "-1"],
                                     "--seed is -1, expected an integer in [0, 4294967295]"),
    "generate resolution too large": option([*GENERATE, "--resolution", "1000000"],
                                            "--n 1000 at --resolution 1000000 would need about", "TiB of memory",
                                            "available (MemAvailable)"),
    "generate too many samples": option([*GENERATE, "--n", "1e9", "--resolution", "64"],
                                        "--n 1000000000 at --resolution 64 would need about", "available"),
    "generate n not an integer": option([*GENERATE, "--n", "2.5"], "--n is '2.5', expected an integer in [1, "),
    "airfoil max-newton 0": option(["generate", "airfoil", "--max-newton", "0", "--out", "{tmp}/o"],
                                   "--max-newton is 0, expected an integer in [1, 1000]"),
    "step3d max-newton 0": option(["generate", "step3d", "--max-newton", "0", "--out", "{tmp}/o"],
                                  "--max-newton is 0, expected an integer in [1, 1000]"),
    "airfrans val fraction": option(["import", "airfrans", "{tmp}", "--out", "{tmp}/o", "--val-fraction", "1.5"],
                                    "--val-fraction is 1.5, expected a number >= 0 and <= 0.99"),
    "train nproc zero": Case([*TRAIN, "--nproc", "0"], ["--nproc is 0, expected an integer in [1, 4096]"], NEW),
    "partition radius NaN": option([*PARTITION, "--radius", "nan"], "--radius is nan, expected a finite number > 0",
                                   outputs=[]),
    "partition plot onto a directory": option([*PARTITION, "--plot", "{tmp}"],
                                              "{tmp}: --plot is a directory, expected a file name", outputs=["{tmp}"]),
    "bench conv device unknown": option(["bench", "conv", "--device", "banana"],
                                        "--device is 'banana', expected cpu, cuda or cuda:K", outputs=[]),
    "bench conv device absent": option(["bench", "conv", "--device", f"cuda:{torch.cuda.device_count() + 7}"],
                                       "CUDA device(s)", outputs=[]),
    "bench scale neighbours zero": option(["bench", "scale", "--neighbors", "0"],
                                          "--neighbors is 0, expected a number > 0", outputs=[]),
    "bench scale nodes 1e20": option(["bench", "scale", "--nodes", "1e4,1e20"],
                                     "--nodes is 1e20, expected an integer in [2, 1000000000]", outputs=[]),
    "bench scale too large to fit": option(["bench", "scale", "--nodes", "1e9", "--neighbors", "5000"],
                                           "--nodes 1,000,000,000 would need about", outputs=[]),
    "bench out is a directory": option(["bench", "scale", "--nodes", "100", "--out", "{tmp}"],
                                       "{tmp}: --out is a directory", outputs=["{tmp}"]),
}
FAST = {"alias bomb in a config file", "alias bomb in an override", "alias bomb in RUN/config.yaml",
        "nesting too deep", "too many YAML values", "config file too large", "huge value in a message",
        "huge unknown key", "airfoil max-newton 0", "step3d max-newton 0"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_or_option_exits_2_with_one_short_line(name, shared, tmp_path, capsys):
    t0 = time.perf_counter()
    line = run_case(CASES[name], World(*shared, tmp_path), capsys)
    seconds = time.perf_counter() - t0
    assert len(line) < 400 + len(str(tmp_path)), line  # values are cut, never printed whole
    if name in FAST:  # ~0.1-0.3 s on a quiet machine; unbounded work (expanding the bomb, a solver) takes minutes
        assert seconds < 10.0, f"{name} took {seconds:.2f} s"
