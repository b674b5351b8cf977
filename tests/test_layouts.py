"""Memory layouts through the functional API: every layout of V and X (used in place or copied
by the plan), transposed views, strided views, and rows far apart. Runs on every device."""

from __future__ import annotations

import numpy as np
import pytest

import fasth
import fasth._engine
from fasth._spec import APPLY, HOUSEHOLDER, Spec

from conftest import LAYOUTS
from helpers import assert_close, randn, random_v
from reference import ref_apply, ref_apply_grad, ref_matrix


# ---------------------------------------------------------------------------------------
# Memory layouts.


@pytest.mark.parametrize("vlayout", LAYOUTS)
@pytest.mark.parametrize("xlayout", LAYOUTS)
@pytest.mark.parametrize("shared", [False, True])
def test_layouts(xp, rng, vlayout, xlayout, shared):
    d, k, n, B, dtype = 7, 5, 4, 3, "float32"
    V = random_v(rng, (d, k) if shared else (B, d, k), dtype)
    X, G = randn(rng, (B, d, n), dtype), randn(rng, (B, d, n), dtype)
    out = fasth.apply(xp(V, vlayout), xp(X, xlayout))
    assert_close(xp.numpy(out), ref_apply(V, X), dtype, d)
    dV, dX = fasth.apply_backward(xp(V, vlayout), xp(xp.numpy(out), xlayout), xp(G, xlayout))
    rdV, rdX = ref_apply_grad(V, X, G)
    assert_close(xp.numpy(dV), rdV, dtype, d + B * n)
    assert_close(xp.numpy(dX), rdX, dtype, d)
    U = fasth.matrix(xp(V, vlayout))
    assert_close(xp.numpy(U), ref_matrix(V), dtype, d)


def test_column_major_transposed_view(xp, rng):
    A = randn(rng, (6, 9))  # (n, d): X = A.T is column-major
    V = random_v(rng, (9, 4))
    X = xp(A).T
    out = fasth.apply(xp(V), X)
    assert_close(xp.numpy(out), ref_apply(V, A.T), "float64", 9)


@pytest.fixture
def copies(monkeypatch):
    """Shapes of the arrays fasth copies because BLAS cannot address them."""
    seen = []
    ns = fasth._arrays
    for cls in (ns.Namespace, ns.TorchNamespace, ns.CupyNamespace):
        for name in ("contiguous", "copy_strided"):
            orig = cls.__dict__.get(name)
            if orig is None:  # inherited: its defining class's spy sees it
                continue

            def spy(self, a, *rest, orig=orig):
                seen.append(tuple(a.shape))
                return orig(self, a, *rest)

            monkeypatch.setattr(cls, name, spy)
    return seen


def test_strided_views_are_used_as_they_are(xp, rng, copies):
    """Any strides reach the core without a copy in Python (the core copies what BLAS cannot
    address into its workspace); only leading dimensions that no one stride walks are copied."""
    d, k = 6, 3
    V = random_v(rng, (d, k))
    big = randn(rng, (d, 10))
    X = xp(big)
    out = fasth.apply(xp(V), X[:, ::2])  # strides (10, 2): BLAS can't address it
    assert_close(xp.numpy(out), ref_apply(V, big[:, ::2]), "float64", d)
    for strategy in ("blockwise", "materialize"):
        G = X[:, 1::2]
        dV, dX = fasth.apply_backward(xp(V), out, G, strategy=strategy)
        rdV, rdX = ref_apply_grad(V, big[:, ::2], big[:, 1::2])
        assert_close(xp.numpy(dV), rdV, "float64", d + 5)
        assert_close(xp.numpy(dX), rdX, "float64", d)
    assert copies == []
    B = randn(rng, (3, 2, d, 4))
    Xb = xp(B).transpose(0, 1) if xp.lib == "torch" else xp(B).swapaxes(0, 1)  # (2, 3, d, 4)
    out = fasth.apply(xp(V), Xb)
    assert_close(xp.numpy(out), ref_apply(V, B.swapaxes(0, 1)), "float64", d)
    assert copies == [(2, 3, d, 4)]
    copies.clear()
    out = fasth.apply(xp(V), X[:, 1:5])  # row-major, leading dimension 10: used in place
    assert_close(xp.numpy(out), ref_apply(V, big[:, 1:5]), "float64", d)
    assert copies == []
    out = fasth.apply(xp(V), xp(big.T.copy()).T[:, 1:5])  # column-major window
    assert_close(xp.numpy(out), ref_apply(V, big[:, 1:5]), "float64", d)
    assert copies == []


@pytest.mark.parametrize("vshape,cols,scale", [
    ((300, 256), 256, 1.0), ((2, 260, 256), 256, 1.0),  # k = 256, a V per entry
    ((300, 256), 200, 1.0),  # a view of 200 columns, rows 256 apart
    ((270, 256), 256, 1e30),  # norms too large to square: V normalised instead
])
def test_rows_far_apart_as_they_are(xp, rng, vshape, cols, scale):
    """V row-major with its rows a multiple of 256 elements apart, used as it is (numpy,
    torch): the forward reads a padded copy of it; values and gradients match the reference,
    from the tape and from the output."""
    V = np.ascontiguousarray(random_v(rng, vshape))[..., :cols] * scale
    X, G = randn(rng, (*vshape[:-2], vshape[-2], 7)), randn(rng, (*vshape[:-2], vshape[-2], 7))
    for transpose in (False, True):
        out = fasth.apply(xp(V), xp(X), transpose)
        assert_close(xp.numpy(out), ref_apply(V, X, transpose), "float64", vshape[-2])
        dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose)
        rdV, rdX = ref_apply_grad(V, X, G, transpose)
        assert_close(xp.numpy(dV) * scale, rdV * scale, "float64", vshape[-2])
        assert_close(xp.numpy(dX), rdX, "float64", vshape[-2])
    c = fasth._engine.resolve(Spec(APPLY, HOUSEHOLDER), "numpy", (V, None, X))
    out, f, tape = fasth._engine.forward(c, V, None, X, tape=True)
    dVt, _, dXt = fasth._engine.backward(c, V, f, None, G, tape=tape)
    rdV, rdX = ref_apply_grad(V, X, G, False)
    assert_close(dVt * scale, rdV * scale, "float64", vshape[-2])
    assert_close(dXt, rdX, "float64", vshape[-2])
    assert_close(fasth.matrix(V), ref_matrix(V), "float64", vshape[-2])
