"""fasth.jax as a drop-in: half precision as matmul, LAPACK's (A, tau) form as JAX's
householder_product and ormqr, more reflectors than rows."""

from __future__ import annotations

import numpy as np
import pytest

from jax.test_util import check_grads
from jax_helpers import _x64, close, dev, jax, jnp, put, randn  # noqa: F401 (fixtures)

import fasth.jax as fj
from reference import ref_apply, ref_matrix


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_half_precision_as_matmul(low):
    V, X = jnp.asarray(randn(12, 12, dtype="float32")), jnp.asarray(randn(12, 4, seed=1, dtype="float32"))
    Vl, Xl = V.astype(low), X.astype(low)
    y = jax.jit(fj.apply)(Vl, Xl)
    assert y.dtype == low
    np.testing.assert_allclose(np.asarray(y, np.float32), fj.apply(Vl.astype(jnp.float32), Xl.astype(jnp.float32)),
                               atol=5e-2, rtol=5e-2)
    gV, gX = jax.grad(lambda V, X: jnp.sum(fj.apply(V, X).astype(jnp.float32) ** 2), (0, 1))(Vl, Xl)
    assert gV.dtype == gX.dtype == low
    assert fj.matrix(Vl).dtype == low
    with pytest.raises(TypeError, match="one dtype"):  # mixed: refused, as matmul would
        fj.apply(V, Xl)


@pytest.mark.parametrize("batch", [(), (2,)])
def test_householder_product_as_jaxs(dev, batch):
    """The values of jax.lax.linalg.householder_product (which has no derivative; fasth's is
    checked against finite differences)."""
    from reference import ref_householder_product

    A = put(randn(*batch, 7, 5), dev)
    tau = np.asarray(randn(*batch, 4, seed=1))
    tau[..., 1] = 0
    tau = put(tau, dev)
    got = jax.jit(fj.householder_product)(A, tau)
    close(got, jax.lax.linalg.householder_product(A, tau), "float64", 7)
    close(got, ref_householder_product(np.asarray(A), np.asarray(tau)), "float64", 7)
    check_grads(fj.householder_product, (A, tau), order=1, modes=["rev"])


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_ormqr(dev, left, transpose):
    from reference import ref_ormqr

    A, tau = put(randn(2, 6, 4), dev), put(randn(2, 4, seed=1), dev)
    C = put(randn(2, 6, 3, seed=2) if left else randn(2, 3, 6, seed=2), dev)
    got = fj.ormqr(A, tau, C, left, transpose)
    close(got, ref_ormqr(np.asarray(A), np.asarray(tau), np.asarray(C), left, transpose), "float64", 6)
    check_grads(lambda A, t, C: fj.ormqr(A, t, C, left, transpose), (A, tau, C), order=1, modes=["rev"])


def test_more_reflectors_than_rows(dev):
    V, X = put(randn(3, 5), dev), put(randn(3, 2, seed=1), dev)
    close(fj.apply(V, X), ref_apply(np.asarray(V), np.asarray(X)), "float64", 5)
    check_grads(lambda V, X: fj.apply(V, X), (V, X), order=1, modes=["rev"])
    close(fj.matrix(V, thin=True), ref_matrix(np.asarray(V), True), "float64", 5)
