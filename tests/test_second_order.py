"""Second derivatives on every path: each is computed correctly or raises a clear error,
never silently wrong. fasth has gradients of the input gradient of ``apply`` (gradient
penalties: ``dX = U^T g`` is ``apply`` again) and no second derivative in ``V``. The paths:
torch eager, ``torch.func``, ``torch.compile``; ``apply`` (both directions) and ``matrix``
(full and thin), unbatched and batched; JAX ``grad`` of ``grad`` and forward over reverse.
Forward mode itself works: tests/test_forward_mode.py. JAX's derivative of V's gradient in X
(no second derivative in V) is computed, in both modes."""

from __future__ import annotations

import pytest
import torch

import fasth.torch as ft

SECOND_IN_V = "gradient of V cannot be differentiated again"


def _inputs(device, batched):
    g = torch.Generator().manual_seed(3)
    lead = (2,) if batched else ()
    V = torch.randn(*lead, 5, 4, generator=g, dtype=torch.float64).to(device)
    X = torch.randn(*lead, 5, 3, generator=g, dtype=torch.float64).to(device)
    return V, X


def _dense_apply(V, X, transpose):
    U = ft.matrix(V.detach())
    return (U.mT if transpose else U) @ X


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_apply_input_gradient_is_differentiable_eager(device, batched, transpose):
    V, X = _inputs(device, batched)
    X.requires_grad_()
    f = lambda X: ft.apply(V, X, transpose)  # noqa: E731
    assert torch.autograd.gradgradcheck(lambda X: torch.sin(f(X)), (X,))


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_apply_input_gradient_is_differentiable_func(device, batched, transpose):
    from torch.func import grad

    V, X = _inputs(device, batched)
    inner = lambda f: lambda X: grad(lambda X: torch.sin(f(X)).sum())(X)  # noqa: E731
    outer = lambda f: grad(lambda X: inner(f)(X).square().sum())(X)  # noqa: E731
    got = outer(lambda X: ft.apply(V, X, transpose))
    want = outer(lambda X: _dense_apply(V, X, transpose))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("op", ["apply", "apply_t", "matrix", "matrix_thin"])
def test_second_derivative_in_v_raises_eager(device, batched, op):
    V, X = _inputs(device, batched)
    V.requires_grad_()
    f = {"apply": lambda V: ft.apply(V, X), "apply_t": lambda V: ft.apply(V, X, True),
         "matrix": lambda V: ft.matrix(V), "matrix_thin": lambda V: ft.matrix(V, thin=True)}[op]
    y = f(V)
    G = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * G).sum(), V, create_graph=True)
    assert g.requires_grad  # never a silently constant gradient
    with pytest.raises(RuntimeError, match=SECOND_IN_V):
        ((y * G).sum() + g.square().sum()).backward()


@pytest.mark.parametrize("op", ["apply", "matrix", "matrix_thin"])
def test_second_derivative_in_v_raises_func(device, op):
    from torch.func import grad, vmap

    V, X = _inputs(device, False)
    f = {"apply": lambda V: ft.apply(V, X), "matrix": lambda V: ft.matrix(V),
         "matrix_thin": lambda V: ft.matrix(V, thin=True)}[op]
    first = lambda V: grad(lambda V: torch.sin(f(V)).sum())(V)  # noqa: E731
    with pytest.raises(RuntimeError, match=SECOND_IN_V):
        grad(lambda V: first(V).square().sum())(V)
    with pytest.raises(RuntimeError, match=SECOND_IN_V):  # per-example, under vmap
        vmap(grad(lambda V: first(V).square().sum()))(torch.stack([V, 2 * V]))
    with pytest.raises(RuntimeError, match=SECOND_IN_V):  # forward over reverse
        torch.func.jacfwd(first)(V)
    # forward mode itself works (tests/test_forward_mode.py checks it against a dense one)
    torch.testing.assert_close(torch.func.jacfwd(f)(V), torch.func.jacrev(f)(V))


def test_second_derivative_under_compile_raises(device):
    V, X = _inputs(device, False)
    V.requires_grad_()
    y = torch.compile(lambda V, X: ft.apply(V, X), fullgraph=True)(V, X)
    (g,) = torch.autograd.grad(y.pow(3).sum(), V, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):  # torch's own, clear error
        g.square().sum().backward()


def test_penalty_through_matrix_raises_not_drops():
    # The case that returned the penalty-free gradient: the penalty's term must not vanish.
    V = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    G = torch.randn(5, 4, dtype=torch.float64)
    U = ft.matrix(V, thin=True)
    (g,) = torch.autograd.grad((U * G).sum(), V, create_graph=True)
    with pytest.raises(RuntimeError, match=SECOND_IN_V):
        ((U * G).sum() + g.square().sum()).backward()


# JAX -----------------------------------------------------------------------------------

def _jax():
    return pytest.importorskip("jax")


@pytest.mark.parametrize("op", ["apply", "apply_t", "matrix", "matrix_thin"])
def test_jax_second_derivative_in_v_raises(op):
    jax = _jax()
    import jax.numpy as jnp
    import numpy as np

    import fasth.jax as fj

    V = jnp.asarray(np.random.default_rng(0).standard_normal((5, 4)), jnp.float32)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((5, 3)), jnp.float32)
    f = {"apply": lambda V: fj.apply(V, X), "apply_t": lambda V: fj.apply(V, X, True),
         "matrix": lambda V: fj.matrix(V), "matrix_thin": lambda V: fj.matrix(V, thin=True)}[op]
    first = jax.grad(lambda V: jnp.sin(f(V)).sum())
    with pytest.raises(NotImplementedError, match=SECOND_IN_V):
        jax.grad(lambda V: (first(V) ** 2).sum())(V)
    with pytest.raises(NotImplementedError, match=SECOND_IN_V):
        jax.jit(jax.grad(lambda V: (first(V) ** 2).sum()))(V)
    with pytest.raises(NotImplementedError, match=SECOND_IN_V):  # forward over reverse
        jax.jacfwd(first)(V)
    # forward mode itself works (tests/test_forward_mode.py checks it against a dense one)
    np.testing.assert_allclose(jax.jacfwd(f)(V), jax.jacrev(f)(V), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("transpose", [False, True])
def test_jax_input_gradient_is_differentiable(transpose):
    jax = _jax()
    import jax.numpy as jnp
    import numpy as np

    import fasth.jax as fj

    V = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 4)), jnp.float32)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 3)), jnp.float32)
    U = fj.matrix(V)
    dense = lambda X: (jnp.swapaxes(U, -1, -2) if transpose else U) @ X  # noqa: E731

    def outer(f):
        inner = jax.grad(lambda X: jnp.sin(f(X)).sum())
        return jax.grad(lambda X: (inner(X) ** 2).sum())(X)

    np.testing.assert_allclose(outer(lambda X: fj.apply(V, X, transpose)), outer(dense),
                               rtol=1e-4, atol=1e-4)


def test_forward_ad_over_v_gradient_raises_not_drops():
    # A loss linear in the output leaves grad_out without a tangent: X's tangent must still
    # reach V's gradient (which then raises), not vanish into a silently zero derivative.
    import torch.autograd.forward_ad as fwAD

    V, X = _inputs("cpu", False)
    V.requires_grad_()
    with fwAD.dual_level():
        out = ft.apply(V, fwAD.make_dual(X, torch.randn_like(X)))
        with pytest.raises(RuntimeError, match=SECOND_IN_V):
            torch.autograd.grad((2.5 * out).sum(), V, create_graph=True)


@pytest.mark.parametrize("loss", ["linear", "sin"])
def test_jax_mixed_second_derivative_of_v_gradient_in_x(loss):
    # d/dX of dL/dV needs no second derivative in V: JAX computes it, in both modes.
    jax = _jax()
    import jax.numpy as jnp
    import numpy as np

    import fasth.jax as fj

    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(0)
        V, X, dX = (jnp.asarray(rng.standard_normal(s)) for s in ((6, 4), (6, 3), (6, 3)))
        U = np.asarray(fj.matrix(V))
        f = {"linear": lambda o: (2.5 * o).sum(), "sin": lambda o: jnp.sin(o).sum()}[loss]

        def dense(V, X):
            W = jnp.eye(6)
            for i in range(4):
                v = V[:, i:i + 1]
                W = W @ (jnp.eye(6) - 2 * v @ v.T / (v * v).sum())
            return W @ X

        np.testing.assert_allclose(U, np.asarray(dense(V, jnp.eye(6))), atol=1e-12)
        for app in (fj.apply,):
            got = lambda X: jax.grad(lambda V: f(app(V, X)))(V)  # noqa: E731
            want = lambda X: jax.grad(lambda V: f(dense(V, X)))(V)  # noqa: E731
            np.testing.assert_allclose(jax.jvp(got, (X,), (dX,))[1], jax.jvp(want, (X,), (dX,))[1],
                                       atol=1e-10)
            np.testing.assert_allclose(jax.jacrev(got)(X), jax.jacrev(want)(X), atol=1e-10)
    finally:
        jax.config.update("jax_enable_x64", False)
