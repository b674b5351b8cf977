"""The benchmark suite runs on a tiny size and writes well-formed outputs (not a timed test)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
from fasth import bench  # noqa: E402


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    methods = "sequential,LAPACK ormqr (SciPy)"
    argv = ["--d", "8,16", "--n", "3,d", "--repeats", "2", "--threads", "1", "--no-progress",
            "--methods", methods, "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "results.md").read_text()
    assert text.strip() in printed
    for op in bench.OPS.values():
        assert f"## {op} (float32, cpu)" in text and f"## {op} (float64, cpu)" in text
    assert "## accuracy (float32)" in text and "| fasth |" in text

    data = json.loads((tmp_path / "results.json").read_text())
    assert {"environment", "config", "results", "accuracy"} <= data.keys()
    assert data["environment"]["versions"]["torch"] and data["environment"]["torch_threads"] == 1
    names = {"fasth", bench.GEMM, *methods.split(",")}
    sizes = {(8, 3), (8, 8), (16, 3), (16, 16)}
    for dtype in ("float32", "float64"):
        for op in ("apply", "fwd+bwd"):
            got = {(r["d"], r["n"], r["method"]) for r in data["results"]
                   if r["op"] == op and r["dtype"] == dtype}
            assert got == {(d, n, m) for d, n in sizes for m in names}
    for r in data["results"]:
        if r["status"] == "ok":
            assert len(r["times_s"]) == r["reps"] >= 1 and r["p25_s"] <= r["median_s"] <= r["p75_s"]
            if r["method"] != "fasth":
                assert r["vs_fasth"]["median"] > 0
        else:
            assert r["status"] in ("n/a", "unavailable", "skipped")
    fasth_rows = [r for r in data["results"] if r["method"] == "fasth" and r["op"] != "matrix"]
    assert all(r["fasth_over_gemm"]["median"] > 0 for r in fasth_rows)
    acc = {(a["dtype"], a["d"], a["method"]): a for a in data["accuracy"]}
    for d in (8, 16):
        a = acc[("float32", d, "fasth")]
        assert 0 <= a["orth_err"] < 1e-4 and 0 <= a["grad_err"] < 1e-3
        assert acc[("float64", d, "fasth")]["orth_err"] < 1e-12

    png = (tmp_path / "time_vs_d.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
