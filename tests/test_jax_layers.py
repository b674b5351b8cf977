"""fasth.jax's Flax NNX layers: values and gradients against their dense weights, dtype
promotion as Flax does, and a clear error without flax."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jax_helpers import _x64, close, dev, jax, jnp, put, randn  # noqa: F401 (fixtures)

import fasth.jax as fj
from reference import ref_matrix


def test_layers(dev):
    nnx = pytest.importorskip("flax.nnx")
    d = 9
    x = put(randn(2, 5, d), dev)
    orth = fj.Orthogonal(d, 4, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    U = orth.weight
    close(U.T @ U, np.eye(d), "float64", d)
    close(orth(x), np.asarray(x) @ ref_matrix(np.asarray(orth.reflectors[...])).T, "float64", d)
    close(orth.inverse(orth(x)), x, "float64", d)
    svd = fj.SVDDense(d, rngs=nnx.Rngs(2), param_dtype=jnp.float64)
    svd.S[...] = jnp.linspace(0.5, 3.0, d)
    svd.bias[...] = jnp.arange(d, dtype=jnp.float64)
    W = np.asarray(svd.weight)
    close(svd(x), np.asarray(x) @ W.T + np.arange(d), "float64", d)  # applied (10 rows)
    xb = put(randn(4 * d, d, seed=5), dev)  # many rows: the materialised W
    close(svd(xb), np.asarray(xb) @ W.T + np.arange(d), "float64", d)
    close(svd.inverse(svd(x)), x, "float64", d)
    close(svd.logabsdet(), np.linalg.slogdet(W)[1], "float64", d)
    close(svd.spectral_norm(), np.linalg.norm(W, 2), "float64", d)
    more = fj.Orthogonal(d, d + 3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)  # k > d reflectors
    close(more.weight, ref_matrix(np.asarray(more.reflectors[...])), "float64", d)
    with pytest.raises(ValueError, match="reflectors"):
        fj.Orthogonal(d, -1, rngs=nnx.Rngs(0))


def test_layers_promote_input_and_parameters_as_flax_does():
    nnx = pytest.importorskip("flax.nnx")
    x, img = jnp.asarray(randn(3, 8, dtype="float32")), jnp.asarray(randn(2, 5, 5, 4, dtype="float32"))
    layers = [(fj.Orthogonal(8, rngs=nnx.Rngs(0)), x), (fj.SVDDense(8, rngs=nnx.Rngs(1)), x),
              (fj.SpectralDense(8, 6, rngs=nnx.Rngs(2)), x),
              (fj.SpectralDense(8, 6, rngs=nnx.Rngs(3)), jnp.tile(x, (10, 1))),  # materialised W
              (fj.SpectralConv1x1(4, 6, rngs=nnx.Rngs(4)), img),
              (fj.SpectralConv(4, 6, 3, rngs=nnx.Rngs(5)), img)]
    for layer, a in layers:
        low = a.astype(jnp.bfloat16)  # float32 parameters: computed and returned in float32
        y = layer(low)
        assert y.dtype == jnp.float32
        np.testing.assert_array_equal(y, layer(low.astype(jnp.float32)))
        g = nnx.grad(lambda m: jnp.sum(m(low) ** 2))(layer)
        assert all(bool(jnp.isfinite(v).all()) for v in jax.tree.leaves(g))
        assert layer(a.astype(jnp.float64)).dtype == jnp.float64  # float64 input: float64
    svd = layers[1][0]
    y = svd(x.astype(jnp.bfloat16))
    np.testing.assert_allclose(svd.inverse(y.astype(jnp.bfloat16)), x, atol=0.05)
    assert fj.Orthogonal(8, rngs=nnx.Rngs(0), param_dtype=jnp.float64)(x).dtype == jnp.float64


def test_layers_without_flax_say_what_is_missing():
    script = textwrap.dedent("""
        import sys
        sys.modules["flax"] = None  # as if flax were not installed
        import jax.numpy as jnp
        import fasth.jax as fj
        assert fj.apply(jnp.eye(3) + 1, jnp.ones((3, 2))).shape == (3, 2)  # the functions work
        for name in ("SVDDense", "SpectralDense"):
            try:
                getattr(fj, name)
            except AttributeError as e:
                print(e)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("flax is not installed") == 2, r.stdout
