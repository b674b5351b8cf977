"""The benchmark suite and the layer benchmark run on tiny sizes and write well-formed outputs
(not timed tests: speed claims live in the benchmarks' own output), and the shared timing
utility interleaves as it says."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
from fasth import bench  # noqa: E402
from fasth.bench import cases, cli, layers, timing  # noqa: E402


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    methods = "sequential,LAPACK ormqr (SciPy)"
    argv = ["--d", "8,16", "--n", "3,d", "--repeats", "2", "--threads", "1", "--no-progress",
            "--methods", methods, "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "results.md").read_text()
    assert text.strip() in printed
    for op in cases.OPS.values():
        assert f"## {op} (float32, cpu)" in text and f"## {op} (float64, cpu)" in text
    assert "## accuracy (float32)" in text and "| fasth |" in text

    data = json.loads((tmp_path / "results.json").read_text())
    assert {"environment", "config", "results", "accuracy"} <= data.keys()
    assert data["environment"]["versions"]["torch"] and data["environment"]["torch_threads"] == 1
    names = {"fasth", cases.GEMM, *methods.split(",")}
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


def test_layer_bench_writes_table_json_and_plot(tmp_path, capsys):
    argv = ["--layers", "--d", "8,16", "--batch", "4", "--repeats", "2", "--threads", "1,2",
            "--no-progress", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "results.md").read_text()
    assert text.strip() in printed
    for n in ("1 thread", "2 threads"):
        assert f"## training step, batch 4, {n}" in text and f"## fixed cost per call, {n}" in text
    assert "## backend calls per training step" in text and "| fasth Orthogonal |" in text

    data = json.loads((tmp_path / "results.json").read_text())
    assert {"environment", "config", "steps", "calls", "accuracy", "plans"} <= data.keys()
    plan_calls = {(r["d"], r["n"], r["device"]): r for r in data["plans"]}
    assert plan_calls[(1024, 256, "cuda")]["forward"] <= 12
    assert plan_calls[(1024, 256, "cuda")]["forward_backward"] <= 40
    assert "## backend calls of `apply`" in text
    steps = {(r["threads"], r["d"], r["layer"]): r for r in data["steps"]}
    assert set(steps) == {(n, d, m) for n in (1, 2) for d in (8, 16) for m in layers.LAYERS}
    for (n, d, m), r in steps.items():
        if r["status"] != "ok":  # geotorch and nflows where they are not installed
            assert r["status"] == "unavailable" and m in ("geotorch orthogonal", "nflows SVDLinear")
            continue
        assert len(r["times_s"]) == r["reps"] >= 1 and r["p25_s"] <= r["median_s"] <= r["p75_s"]
        if m != layers.LINEAR:
            assert r["vs_linear"]["median"] > 0
        if layers.LAYERS[m].peer:
            assert r["vs_peer"]["median"] > 0
        if layers.LAYERS[m].fasth and n == 1:  # counted at the first thread count
            assert r["backend_calls"] == sum(r["by_op"].values()) > 0
    assert "backend_calls" not in steps[(1, 8, layers.LINEAR)]
    ops = {(r["threads"], r["op"]) for r in data["calls"]}
    for n in (1, 2):
        assert {(n, "fasth.torch.apply"), (n, "W @ X"), (n, "fasth.apply"),
                (n, "fasth.torch.matrix"), (n, "Cayley solve(I + S, I - S)")} <= ops
    for r in data["calls"]:
        assert r["median_s"] > 0 and (r["op"] == r["base"]) == ("vs_base" not in r)
    counted = [r for r in data["calls"] if "backend_calls" in r]
    assert counted and all(r["backend_calls"] > 0 for r in counted)
    acc = {(a["layer"], a["d"]): a["orth_err"] for a in data["accuracy"]}
    assert 0 <= acc[("fasth Orthogonal", 16)] < 1e-5 and ("fasth SVDLinear", 16) not in acc

    png = (tmp_path / "layers_vs_d.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_layer_bench_quick_excludes_the_wide_case():
    ap = cli.parser()
    quick = cli.layer_config(ap, ap.parse_args(["--layers", "--quick"]))
    full = cli.layer_config(ap, ap.parse_args(["--layers"]))
    assert quick.threads == full.threads == [1, 2]
    assert not quick.full and full.full
    assert set(quick.ds) < set(full.ds) == {64, 256, 512, 1024} and set(full.batches) == {32, 128, 1024}


def test_suite_takes_one_thread_count(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--threads", "1,2"])
    assert "--threads" in capsys.readouterr().err


def test_interleaved_rotates_and_keeps_a_slow_first_call():
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    samples = timing.interleaved(fns, 3, warmup=1)
    assert all(len(s) == 3 for s in samples.values())
    assert order[3:] == list("abc" "bca" "cab")  # after one warm-up call each
    slow = timing.interleaved({"slow": lambda: None, "fast": lambda: None}, 4,
                              slow_s={"slow": -1.0, "fast": float("inf")})
    assert len(slow["slow"]) == 1 and len(slow["fast"]) == 4
    errors = {}

    def fails():
        raise RuntimeError("no")

    got = timing.interleaved({"ok": lambda: None, "bad": fails}, 2, on_error=errors.__setitem__)
    assert set(got) == {"ok"} and isinstance(errors["bad"], RuntimeError)
    assert timing.ratio([2.0, 4.0], [1.0, 2.0])["median"] == 2.0
    assert timing.ratio([], [1.0]) is None


def test_budget_skips_by_the_estimate():
    b = timing.Budget(cap_s=1.0)
    assert b.over("x", 64) is None
    b.record("x", 64, 0.1)
    assert b.over("x", 128) is None and b.over("x", 256) == pytest.approx(6.4)
    assert b.over("x", 256, factor=10) is None


TINY = ["--d", "8", "--n", "3", "--repeats", "1", "--threads", "1", "--no-progress", "--ops", "apply",
        "--methods", "sequential"]


@pytest.mark.parametrize("variable, value", [("OMP_NUM_THREADS", "1"), ("OPENBLAS_CORETYPE", "Haswell"),
                                             ("MKL_NUM_THREADS", "{0} {x}")])
def test_report_header_takes_any_environment(tmp_path, monkeypatch, capsys, variable, value):
    monkeypatch.setenv(variable, value)
    assert bench.main(TINY + ["--out", str(tmp_path)]) == 0
    text = (tmp_path / "results.md").read_text()
    assert variable in text and "load average" in text


def test_a_failing_run_keeps_its_rows_and_reports_them(tmp_path, monkeypatch, capsys):
    from fasth.bench import record, suite

    group, calls = suite.Suite.group, []

    def fails_second(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return group(self, *args)

    monkeypatch.setattr(suite.Suite, "group", fails_second)
    with pytest.raises(RuntimeError, match="injected"):
        bench.main(TINY[:1] + ["8,16"] + TINY[2:] + ["--out", str(tmp_path)])
    rows = record.read(tmp_path / record.ROWS)
    assert {(r["d"], r["method"]) for r in rows["results"]} == {(8, "fasth"), (8, cases.GEMM), (8, "sequential")}
    assert rows["header"][0]["environment"]["command"].startswith("python -m fasth bench")
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("**Interrupted") and "d=8 n=3" in text
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is False


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_killed_run_leaves_its_measured_rows_on_disk(tmp_path, sig):
    import os
    import signal
    import subprocess
    import sys
    import time

    from fasth.bench import record

    rows = tmp_path / record.ROWS
    argv = ["--layers", "--d", "8,16,24,32,40,48,56,64", "--batch", "4", "--repeats", "3", "--threads", "1",
            "--no-progress", "--methods", "fasth Orthogonal", "--out", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "fasth", "bench", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if rows.exists() and sum('"table": "steps"' in line for line in rows.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read()
    proc.send_signal(getattr(signal, sig))
    proc.wait(60)
    assert proc.returncode != 0
    steps = record.read(rows)["steps"]
    assert len(steps) >= 2 and all(r["status"] == "ok" and r["times_s"] for r in steps)
    assert (tmp_path / "results.md").read_text().startswith("**Interrupted")
    assert os.path.getsize(tmp_path / "results.json") > 0
