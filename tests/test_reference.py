"""The float64 reference itself (tests/reference.py): its gradients against finite differences, its U orthogonal and ordered."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import randn, random_v
from reference import finite_difference, ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad


# ---------------------------------------------------------------------------------------
# The reference itself: its gradients against finite differences.

@pytest.mark.parametrize("transpose", [False, True])
def test_reference_gradients_match_finite_differences(rng, transpose):
    V = random_v(rng, (5, 3), zero_cols=[1])
    X, G = randn(rng, (5, 2)), randn(rng, (5, 2))
    dV, dX = ref_apply_grad(V, X, G, transpose)
    np.testing.assert_allclose(dV, finite_difference(lambda v: ref_apply(v, X, transpose), V, G),
                               atol=1e-7)
    np.testing.assert_allclose(dX, finite_difference(lambda x: ref_apply(V, x, transpose), X, G),
                               atol=1e-7)
    assert np.all(dV[:, 1] == 0)
    for thin in (False, True):
        Gm = randn(rng, (5, 3 if thin else 5))
        np.testing.assert_allclose(ref_matrix_grad(V, Gm, thin),
                                   finite_difference(lambda v: ref_matrix(v, thin), V, Gm),
                                   atol=1e-7)


def test_reference_is_orthogonal_and_ordered(rng):
    V = random_v(rng, (4, 3))
    U = ref_matrix(V)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-14)
    H = [np.eye(4) - 2 * np.outer(v, v) / (v @ v) for v in V.T]
    np.testing.assert_allclose(U, H[0] @ H[1] @ H[2], atol=1e-14)
    X = randn(rng, (4, 2))
    np.testing.assert_allclose(ref_apply(V, X, True), U.T @ X, atol=1e-14)
