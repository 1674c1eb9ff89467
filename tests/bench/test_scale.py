"""`dsmpnn bench scale` and `dsmpnn bench conv` end to end at tiny N; the slope fit and the radius by hand."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsmpnn.bench import bench_scale, fit_slopes, format_scale_table, scale_radius
from dsmpnn.bench.scale import write_json
from dsmpnn.cli import main


def test_scale_radius_gives_the_neighbour_count():
    assert scale_radius(10**6, 2, 25) == pytest.approx(np.sqrt(25 / (np.pi * 1e6)))
    assert 4 / 3 * np.pi * scale_radius(1000, 3, 25) ** 3 * 1000 == pytest.approx(25)
    with pytest.raises(ValueError, match="dim"):
        scale_radius(10, 4, 25)


def test_fit_slopes_of_power_laws():
    pts = [{"nodes": n, "graph_s": 1e-6 * n, "forward_s": 1e-9 * n**2, "backward_s": 2.0, "peak_mib": 3 * n,
            "edges": 25 * n} for n in (100, 1000, 10_000)]
    s = fit_slopes(pts)
    assert s["graph_s"] == pytest.approx(1) and s["forward_s"] == pytest.approx(2)
    assert s["backward_s"] == pytest.approx(0, abs=1e-9) and s["edges"] == pytest.approx(1)
    assert fit_slopes(pts[:1]) == {}


def test_bench_scale_command_tiny(tmp_path, capsys):
    """The command end to end: one N, measured in a fresh process, table, JSON and plot written atomically."""
    out, plot = tmp_path / "scale.json", tmp_path / "scale.png"
    code = main(["bench", "scale", "--nodes", "300", "--dim", "3", "--channels", "4", "--layers", "2",
                 "--threads", "1", "--out", str(out), "--plot", str(plot)])
    assert code == 0
    assert "| 300 |" in capsys.readouterr().out
    result = json.loads(out.read_text())
    (p,) = result["points"]
    assert p["nodes"] == 300 and p["edges"] > 0 and p["forward_s"] > 0 and p["backward_s"] > 0
    assert p["peak_mib"] >= 0 and p["layers"] == 2 and p["channels"] == 4 and p["dim"] == 3
    assert result["settings"]["isolated"] and result["slopes"] == {}
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary behind


def test_bench_scale_in_process_table_and_slopes():
    result = bench_scale([200, 400], dim=2, channels=4, layers=1, threads=1, isolate=False, echo=None)
    assert [p["nodes"] for p in result["points"]] == [200, 400]
    assert set(result["slopes"]) >= {"graph_s", "forward_s", "backward_s", "edges"}
    assert 0.5 < result["slopes"]["edges"] < 1.5
    text = format_scale_table(result)
    assert "| 400 |" in text and "slopes of log(.) vs log(N)" in text


def test_bench_conv_command_tiny(tmp_path, capsys):
    out = tmp_path / "conv.json"
    assert main(["bench", "conv", "--nodes", "300", "--radius", "0.1", "--channels", "4", "--hidden", "8",
                 "--repeats", "1", "--dense-size", "64", "--edge-chunk", "64", "--out", str(out)]) == 0
    assert "ECConv" in capsys.readouterr().out
    assert json.loads(out.read_text())["graph"]["edges"] > 0


def test_bench_scale_refuses_bad_node_lists(capsys):
    assert main(["bench", "scale", "--nodes", "1e4,abc"]) == 2
    assert "--nodes is 'abc', expected an integer in [2, " in capsys.readouterr().err
    assert main(["bench", "scale", "--nodes", ","]) == 2
    assert "expected comma-separated node counts" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_scale_point_on_device(device, mode):
    """One N with the model on ``device`` (cuda skipped without a GPU): the graph is built on the CPU and copied;
    on CUDA the peak is the allocator's; predict times the inference forward and has no backward."""
    from dsmpnn.bench.scale import run_point

    p = run_point(300, dim=2, channels=4, layers=1, threads=1, device=str(device), mode=mode, edge_chunk=256)
    assert p["device"].startswith(device.type) and p["mode"] == mode and p["output_finite"]
    assert p["forward_s"] > 0 and p["peak_mib"] >= 0 and p["edges"] > 0 and p["edge_chunk"] == 256
    assert (p["backward_s"] is None) == (mode == "predict")
    assert ("gpu" in p) == (device.type == "cuda") and ("transfer_s" in p) == (device.type == "cuda")


def test_bench_scale_predict_mode_command(tmp_path, capsys):
    """--mode predict --device cpu: the table shows '-' for backward, the slopes leave backward out, the plot
    is drawn without it."""
    out, plot = tmp_path / "scale.json", tmp_path / "scale.png"
    code = main(["bench", "scale", "--nodes", "200,400", "--channels", "4", "--layers", "1", "--threads", "1",
                 "--device", "cpu", "--mode", "predict", "--edge-chunk", "512", "--out", str(out), "--plot", str(plot)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| 400 |" in text and "predict: inference forward only" in text
    result = json.loads(out.read_text())
    assert result["settings"]["mode"] == "predict" and result["settings"]["device"] == "cpu"
    assert all(p["backward_s"] is None for p in result["points"]) and "backward_s" not in result["slopes"]
    assert plot.read_bytes()[:4] == b"\x89PNG"


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
                     max_leaves=30)


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.text(), _JSON, max_size=4))
def test_write_json_reads_back_the_same(tmp_path_factory, doc):
    """Lists of plain values go on one line; any document (strings with brackets, quotes, newlines) reads back."""
    path = write_json(doc, tmp_path_factory.mktemp("j") / "r.json")
    assert json.loads(path.read_text()) == doc


def test_write_json_puts_lists_of_values_on_one_line(tmp_path):
    text = write_json({"P": [1, 2, 4], "curve": {"step_s": [0.5, 0.25]}, "rows": [{"a": 1}]}, tmp_path / "r.json")
    assert '"P": [1, 2, 4]' in text.read_text() and '"step_s": [0.5, 0.25]' in text.read_text()
