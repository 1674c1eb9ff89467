"""DSMPNN_PROFILE writes one cProfile dump and one text summary per rank, and nothing without the variable."""

import pstats

from dsmpnn.profiling import profiled


def busy() -> int:
    return sum(i * i for i in range(10_000))


def test_profile_files_per_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMPNN_PROFILE", str(tmp_path / "p"))
    assert profiled(busy, 3) == busy()
    stats = pstats.Stats(str(tmp_path / "p.rank3.prof"))
    assert any(func[2] == "busy" for func in stats.stats)
    assert "busy" in (tmp_path / "p.rank3.txt").read_text()


def test_nothing_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("DSMPNN_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert profiled(busy, 0) == busy()
    assert list(tmp_path.iterdir()) == []
