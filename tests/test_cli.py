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
