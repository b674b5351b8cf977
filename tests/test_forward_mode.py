"""Forward mode (the core's tangent pass) on every path: torch's forward AD (dual tensors,
torch.func.jvp, jacfwd, hessian in the input, gradcheck's forward-mode and batched checks) and
JAX's (jvp, linearize, jacfwd, hessian in the input, check_grads in both modes, reverse mode
by transposing the tangent). Each against a dense float64 reference built from the
definitions (tests/reference.py's loop over reflectors, written here in each library so that
its own autodiff differentiates it). A derivative of V's gradient in V still raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fasth.torch as ft

SECOND_IN_V = "gradient of V cannot be differentiated again"


# torch ----------------------------------------------------------------------------------

def _dense_u(V):
    d = V.shape[-2]
    U = torch.eye(d, dtype=V.dtype).expand(*V.shape[:-2], d, d)
    for i in range(V.shape[-1]):
        v = V[..., :, i:i + 1]
        U = U @ (torch.eye(d, dtype=V.dtype) - 2 * v @ v.mT / (v * v).sum(-2, keepdim=True))
    return U


def _dense_q(A, tau):
    d, k = A.shape[-2], tau.shape[-1]
    Y = A.tril(-1)[..., :k] + torch.eye(d, k, dtype=A.dtype)
    U = torch.eye(d, dtype=A.dtype).expand(*A.shape[:-2], d, d)
    for i in range(k):
        y = Y[..., :, i:i + 1]
        U = U @ (torch.eye(d, dtype=A.dtype) - tau[..., i, None, None] * (y @ y.mT))
    return U


def _cases():
    """(name, fasth function, dense function, input shapes): float64 inputs."""
    return {
        "apply": (ft.apply, lambda V, X: _dense_u(V) @ X, [(7, 5), (7, 3)]),
        "apply_t": (lambda V, X: ft.apply(V, X, True), lambda V, X: _dense_u(V).mT @ X,
                    [(7, 5), (7, 3)]),
        "apply_batched": (ft.apply, lambda V, X: _dense_u(V) @ X, [(2, 7, 5), (2, 7, 3)]),
        "apply_shared": (ft.apply, lambda V, X: _dense_u(V) @ X, [(7, 5), (2, 7, 3)]),
        "apply_blocks": (lambda V, X: ft.apply(V, X, block=2, strategy="blockwise"),
                         lambda V, X: _dense_u(V) @ X, [(9, 9), (9, 4)]),
        "apply_materialize": (lambda V, X: ft.apply(V, X, strategy="materialize"),
                              lambda V, X: _dense_u(V) @ X, [(6, 6), (6, 20)]),
        "matrix": (ft.matrix, _dense_u, [(6, 4)]),
        "matrix_thin": (lambda V: ft.matrix(V, thin=True), lambda V: _dense_u(V)[..., :4],
                        [(2, 6, 4)]),
        "householder_product": (ft.householder_product,
                                lambda A, tau: _dense_q(A, tau)[..., :A.shape[-1]],
                                [(7, 5), (4,)]),
        "ormqr": (ft.ormqr, lambda A, tau, C: _dense_q(A, tau) @ C, [(7, 5), (4,), (7, 3)]),
        "ormqr_right_t": (lambda A, tau, C: ft.ormqr(A, tau, C, left=False, transpose=True),
                          lambda A, tau, C: C @ _dense_q(A, tau).mT, [(7, 5), (4,), (3, 7)]),
    }


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("name", list(_cases()))
def test_torch_jvp_and_jacfwd_match_dense(name):
    f, dense, shapes = _cases()[name]
    xs, ts = _inputs(shapes), _inputs(shapes, 1)
    _, got = torch.func.jvp(f, tuple(xs), tuple(ts))
    _, want = torch.func.jvp(dense, tuple(xs), tuple(ts))
    torch.testing.assert_close(got, want)
    args = tuple(range(len(xs)))
    for a, b in zip(torch.func.jacfwd(f, args)(*xs), torch.func.jacrev(dense, args)(*xs)):
        torch.testing.assert_close(a, b)
    from torch.autograd import forward_ad as fwAD
    with fwAD.dual_level():  # dual tensors, eagerly (with and without requires_grad)
        duals = [fwAD.make_dual(x.clone().requires_grad_(i == 0), t) for i, (x, t) in enumerate(zip(xs, ts))]
        torch.testing.assert_close(fwAD.unpack_dual(f(*duals)).tangent, want)


@pytest.mark.parametrize("name", ["apply", "apply_t", "apply_shared", "matrix_thin",
                                  "householder_product", "ormqr", "ormqr_right_t"])
def test_torch_gradcheck_forward_and_batched(name):
    f, _, shapes = _cases()[name]
    xs = [x.requires_grad_() for x in _inputs(shapes)]
    assert torch.autograd.gradcheck(f, xs, check_forward_ad=True, check_backward_ad=True,
                                    check_batched_grad=True, check_batched_forward_grad=True)


@pytest.mark.parametrize("name", ["apply", "apply_t", "ormqr"])
def test_torch_second_derivatives_in_the_input(name):
    f, dense, shapes = _cases()[name]
    xs = _inputs(shapes)
    V = xs[:-1]
    loss = lambda g: lambda X: torch.sin(g(*V, X)).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.hessian(loss(f))(xs[-1]),
                               torch.func.hessian(loss(dense))(xs[-1]))
    X = xs[-1].clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda X: torch.sin(f(*V, X)), (X,),
                                        check_fwd_over_rev=True, check_rev_over_rev=True)


def test_torch_second_derivative_in_v_still_raises():
    V, X = _inputs([(6, 4), (6, 3)])
    loss = lambda V: torch.sin(ft.apply(V, X)).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match=SECOND_IN_V):
        torch.func.hessian(loss)(V)
    with pytest.raises(RuntimeError, match=SECOND_IN_V):
        torch.func.jacfwd(torch.func.grad(loss))(V)


# JAX ------------------------------------------------------------------------------------

@pytest.fixture
def jx():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", False)


def _jcases(jnp, fj):
    def dense_u(V):
        d = V.shape[-2]
        U = jnp.eye(d, dtype=V.dtype)
        for i in range(V.shape[-1]):
            v = V[..., :, i:i + 1]
            vt = jnp.swapaxes(v, -1, -2)
            U = U @ (jnp.eye(d) - 2 * v @ vt / (v * v).sum(-2, keepdims=True))
        return U

    def dense_q(A, tau):
        d, k = A.shape[-2], tau.shape[-1]
        Y = jnp.tril(A, -1)[:, :k] + jnp.eye(d, k)
        U = jnp.eye(d)
        for i in range(k):
            y = Y[:, i:i + 1]
            U = U @ (jnp.eye(d) - tau[i] * y @ y.T)
        return U

    return {
        "apply": (fj.apply, lambda V, X: dense_u(V) @ X, [(7, 5), (7, 3)]),
        "apply_t": (lambda V, X: fj.apply(V, X, True),
                    lambda V, X: jnp.swapaxes(dense_u(V), -1, -2) @ X, [(7, 5), (7, 3)]),
        "apply_blocks_batched": (lambda V, X: fj.apply(V, X, block=2),
                                 lambda V, X: dense_u(V) @ X, [(2, 9, 9), (2, 9, 4)]),
        "apply_shared": (fj.apply, lambda V, X: dense_u(V) @ X, [(7, 5), (2, 7, 3)]),
        "matrix": (fj.matrix, dense_u, [(6, 4)]),
        "matrix_thin": (lambda V: fj.matrix(V, thin=True), lambda V: dense_u(V)[:, :4], [(6, 4)]),
        "householder_product": (fj.householder_product,
                                lambda A, t: dense_q(A, t)[:, :A.shape[-1]], [(7, 5), (4,)]),
        "ormqr": (fj.ormqr, lambda A, t, C: dense_q(A, t) @ C, [(7, 5), (4,), (7, 3)]),
        "ormqr_right_t": (lambda A, t, C: fj.ormqr(A, t, C, left=False, transpose=True),
                          lambda A, t, C: C @ dense_q(A, t).T, [(7, 5), (4,), (3, 7)]),
    }


def _jinputs(jnp, shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s)) for s in shapes]


@pytest.mark.parametrize("name", ["apply", "apply_t", "apply_blocks_batched", "apply_shared",
                                  "matrix", "matrix_thin", "householder_product", "ormqr",
                                  "ormqr_right_t"])
def test_jax_forward_mode_matches_dense(jx, name):
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import fasth.jax as fj

    f, dense, shapes = _jcases(jnp, fj)[name]
    xs, ts = _jinputs(jnp, shapes), _jinputs(jnp, shapes, 1)
    want = jx.jvp(dense, xs, ts)[1]
    np.testing.assert_allclose(jx.jvp(f, xs, ts)[1], want, atol=1e-12)
    np.testing.assert_allclose(jx.jit(lambda xs, ts: jx.jvp(f, xs, ts)[1])(xs, ts), want, atol=1e-12)
    out, lin = jx.linearize(f, *xs)
    np.testing.assert_allclose(lin(*ts), want, atol=1e-12)
    args = tuple(range(len(xs)))
    for a, b in zip(jx.jacfwd(f, args)(*xs), jx.jacrev(dense, args)(*xs)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    check_grads(f, xs, order=1, modes=("fwd", "rev"))


@pytest.mark.parametrize("name", ["apply", "apply_t", "apply_shared", "ormqr", "ormqr_right_t"])
def test_jax_second_order_in_the_input(jx, name):
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import fasth.jax as fj

    f, dense, shapes = _jcases(jnp, fj)[name]
    xs = _jinputs(jnp, shapes)
    V = xs[:-1]
    check_grads(lambda X: f(*V, X), (xs[-1],), order=2, modes=("fwd", "rev"))
    loss = lambda g: lambda X: jnp.sin(g(*V, X)).sum()  # noqa: E731
    np.testing.assert_allclose(jx.hessian(loss(f))(xs[-1]), jx.hessian(loss(dense))(xs[-1]),
                               atol=1e-12)
    # per-example (vmap) forward mode and its transpose
    g = jx.vmap(jx.grad(loss(f)))(jnp.stack([xs[-1], 2 * xs[-1]]))
    np.testing.assert_allclose(g, jx.vmap(jx.grad(loss(dense)))(jnp.stack([xs[-1], 2 * xs[-1]])),
                               atol=1e-12)


def test_jax_reverse_mode_is_the_transposed_tangent(jx):
    import jax.numpy as jnp

    import fasth.jax as fj

    V, X = _jinputs(jnp, [(6, 4), (6, 3)])
    hlo = jx.jit(jx.grad(lambda V, X: jnp.sum(fj.apply(V, X) ** 2), (0, 1))).lower(V, X).as_text()
    assert hlo.count("fasth_forward") == 1 and hlo.count("fasth_backward") == 1
    assert "fasth_tangent" not in hlo  # transposed, not evaluated
    hlo = jx.jit(lambda V, X, t: jx.jvp(fj.apply, (V, X), (t, X))).lower(V, X, V).as_text()
    assert hlo.count("fasth_tangent") == 1 and "fasth_backward" not in hlo


def test_jax_second_derivative_in_v_still_raises(jx):
    import jax.numpy as jnp

    import fasth.jax as fj

    V, X = _jinputs(jnp, [(6, 4), (6, 3)])
    loss = lambda V: jnp.sin(fj.apply(V, X)).sum()  # noqa: E731
    for second in (jx.hessian(loss), jx.jacfwd(jx.grad(loss)), jx.grad(lambda V: jx.grad(loss)(V).sum()),
                   lambda V: jx.jvp(lambda V: jx.jvp(fj.matrix, (V,), (V,))[1], (V,), (V,))):
        with pytest.raises(NotImplementedError, match=SECOND_IN_V):
            second(V)


def test_jax_lapack_shared_by_a_batch(jx):
    import jax.numpy as jnp

    import fasth.jax as fj

    f, dense, _ = _jcases(jnp, fj)["ormqr"]
    A, tau, C = _jinputs(jnp, [(7, 5), (4,), (2, 7, 3)])
    for a, b in zip(jx.jacfwd(f, (0, 1, 2))(A, tau, C), jx.jacrev(dense, (0, 1, 2))(A, tau, C)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    loss = lambda g: lambda A, t, C: jnp.sin(g(A, t, C)).sum()  # noqa: E731
    for a, b in zip(jx.vmap(jx.grad(loss(f), (0, 1)), (None, None, 0))(A, tau, C),
                    jx.vmap(jx.grad(loss(dense), (0, 1)), (None, None, 0))(A, tau, C)):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_torch_forward_ad_under_compile_raises_not_drops():
    # torch.compile has no forward-mode AD (nor a rule for fasth's custom ops): fasth says so
    # rather than return an output without its tangent.
    from torch.autograd import forward_ad as fwAD

    V, X = _inputs([(6, 4), (6, 3)])
    g = torch.compile(lambda V, X: ft.apply(V, X), fullgraph=True)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD under torch.compile"):
        g(fwAD.make_dual(V, torch.ones_like(V)), X)
