"""The command-line tools: a --device this machine lacks is a usage error naming it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fasth import bench  # noqa: E402
from fasth.demos import glow, spectral  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("main, argv", [
    (glow.main, ["--device", "cuda", "--bench"]),
    (glow.main, ["--device", "cuda:0", "--epochs", "1"]),
    (spectral.main, ["--device", "cuda"]),
    (bench.main, ["--device", "cuda", "--quick"]),
])
def test_missing_cuda_device_is_a_usage_error(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "--device cuda" in capsys.readouterr().err


def test_unknown_jax_backend_is_a_usage_error(capsys):
    jax = pytest.importorskip("jax")
    try:
        jax.devices("cuda")
        pytest.skip("this machine has a JAX CUDA backend")
    except RuntimeError:
        pass
    for main in (spectral.main, glow.main):
        with pytest.raises(SystemExit):
            main(["--framework", "jax", "--device", "cuda"])
        assert "JAX has no such backend" in capsys.readouterr().err


def test_selfcheck_never_prints_a_forward_slower_than_forward_and_backward(capsys):
    import re

    from fasth import selfcheck

    assert selfcheck.main(["-d", "64", "-n", "8", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "self-check passed" in out
    shown = {m[0]: (float(m[1]), float(m[2])) for m in
             re.findall(r"^  (forward(?: \+ backward)?) +([\d.]+)ms +([\d.]+)ms", out, re.M)}
    if shown:
        fwd, fb = shown["forward"], shown["forward + backward"]
        assert fwd[0] <= fb[0] and fwd[1] <= fb[1]
    else:
        assert "too noisy to time" in out


def test_settled_waits_out_a_slow_start():
    import time

    from fasth.bench import timing

    calls = []

    def slow_start():  # slow for its first 6 calls (1.5 rounds), as a fresh process's threads
        calls.append(1)
        time.sleep(0.02 if len(calls) <= 6 else 0.001)

    samples, best, done = timing.settled({"f": slow_start}, 3)
    assert done and best["f"] < 0.01 and len(calls) >= 16  # two quiet rounds after the slow ones
    _, _, done = timing.settled({"f": lambda: time.sleep(0.001 * (1 + len(calls) % 2))}, 1, max_rounds=1)
    assert not done


def test_main_help_lists_the_selfcheck_options(capsys):
    from fasth.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("-d D", "--repeats", "--device"):
        assert option in out
    assert "``" not in out
