"""What the JAX test modules share: float64 while they run, the `dev` fixture (CPU, and a JAX
GPU where there is one), arrays put on it, and closeness to the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from reference import tolerance  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """float64 for the importing module's tests only: other test modules keep JAX's default."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _gpu_reason() -> str | None:
    try:
        jax.devices("gpu")
    except RuntimeError:
        return "no JAX GPU backend"
    return None


@pytest.fixture(params=["cpu", "cuda"])
def dev(request):
    if request.param == "cuda" and _gpu_reason():
        pytest.skip(_gpu_reason())
    return jax.devices("cpu" if request.param == "cpu" else "gpu")[0]


def randn(*shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def put(a, dev):
    return jax.device_put(jnp.asarray(a), dev)


def close(got, want, dtype, d):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance(dtype, d) * scale)
