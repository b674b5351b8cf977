"""Complex reflectors (H = I - tau v v^H, LAPACK's complex conventions) through the adapters:
values and gradients against the complex128 reference loop and against torch's own complex
householder_product / ormqr; gradcheck (torch's conjugate Wirtinger convention) on complex128
through every path; bad input; the named errors where complex is not taken yet (forward mode,
fasth.jax). The functional API's complex cases run in test_values, test_gradients, test_fuzz
and the other array tests (helpers.DTYPES includes complex64 and complex128)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fasth.torch as ft
from reference import (ref_apply, ref_apply_grad, ref_householder_product, ref_matrix,
                       ref_matrix_grad, ref_ormqr, tolerance)

CDTYPES = [torch.complex64, torch.complex128]


def crandn(*shape, dtype=torch.complex128, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g).to(device)


def close(got, want, dtype, d):
    got = got.detach().resolve_conj().cpu().numpy().astype(np.complex128)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    assert np.abs(got - want).max(initial=0.0) <= tolerance(dtype, d) * scale


def samples(device, dtype=torch.complex128):
    """(V, X): k < d, k = d, k > d, batched, shared V, a thin X (n = 1)."""
    return [
        (crandn(6, 4, dtype=dtype, seed=1, device=device), crandn(6, 5, dtype=dtype, seed=2, device=device)),
        (crandn(7, 7, dtype=dtype, seed=3, device=device), crandn(7, 3, dtype=dtype, seed=4, device=device)),
        (crandn(4, 6, dtype=dtype, seed=5, device=device), crandn(4, 2, dtype=dtype, seed=6, device=device)),
        (crandn(2, 5, 3, dtype=dtype, seed=7, device=device), crandn(2, 5, 4, dtype=dtype, seed=8, device=device)),
        (crandn(5, 5, dtype=dtype, seed=9, device=device), crandn(3, 5, 2, dtype=dtype, seed=10, device=device)),
        (crandn(9, 9, dtype=dtype, seed=11, device=device), crandn(9, 1, dtype=dtype, seed=12, device=device)),
    ]


# ---------------------------------------------------------------------------------------
# torch: values and gradients against the reference

@pytest.mark.parametrize("dtype", CDTYPES)
@pytest.mark.parametrize("transpose", [False, True])
def test_torch_apply_matches_reference(device, dtype, transpose):
    for V, X in samples(device, dtype):
        for Xl in (X, X.mT.contiguous().mT):  # row- and column-major X
            V_, X_ = V.clone().requires_grad_(), Xl.clone().requires_grad_()
            out = ft.apply(V_, X_, transpose, block=2)
            Vn, Xn = V.cpu().numpy(), X.cpu().numpy()
            close(out, ref_apply(Vn, Xn, transpose), dtype, V.shape[-2])
            G = crandn(*out.shape, dtype=dtype, seed=99, device=device)
            out.backward(G)
            rdV, rdX = ref_apply_grad(Vn, Xn, G.cpu().numpy(), transpose)
            close(V_.grad, rdV, dtype, 4 * V.shape[-2] * X.shape[-1])
            close(X_.grad, rdX, dtype, V.shape[-2])


@pytest.mark.parametrize("dtype", CDTYPES)
@pytest.mark.parametrize("thin", [False, True])
def test_torch_matrix_matches_reference(device, dtype, thin):
    for V, _ in samples(device, dtype):
        V_ = V.clone().requires_grad_()
        U = ft.matrix(V_, thin)
        close(U, ref_matrix(V.cpu().numpy(), thin), dtype, V.shape[-2])
        # unitary: U^H U = I
        Ud = U.detach().to(torch.complex128)
        eye = torch.eye(Ud.shape[-1], dtype=Ud.dtype, device=Ud.device)
        assert (Ud.mH @ Ud - eye).abs().max() <= tolerance(dtype, V.shape[-2])
        G = crandn(*U.shape, dtype=dtype, seed=5, device=device)
        U.backward(G)
        close(V_.grad, ref_matrix_grad(V.cpu().numpy(), G.cpu().numpy(), thin), dtype,
              4 * V.shape[-2] ** 2)


@pytest.mark.parametrize("strategy", ["auto", "blockwise"])
@pytest.mark.parametrize("transpose", [False, True])
def test_torch_apply_gradcheck(device, strategy, transpose):
    for V, X in samples(device)[:5]:
        V.requires_grad_(), X.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda V, X: ft.apply(V, X, transpose, strategy=strategy, block=2), (V, X))


@pytest.mark.parametrize("thin", [False, True])
def test_torch_matrix_gradcheck(device, thin):
    for V, _ in samples(device)[:4]:
        V.requires_grad_()
        assert torch.autograd.gradcheck(lambda V: ft.matrix(V, thin, block=3), (V,))


def test_torch_conjugate_views_are_read_as_values(device):
    """A lazily conjugated view (x.conj(), x.mH) is its values, not its memory."""
    V, X = samples(device)[0]
    want = ft.apply(V.conj().resolve_conj(), X.conj().resolve_conj())
    torch.testing.assert_close(ft.apply(V.conj(), X.conj()), want)
    Vg = V.clone().requires_grad_()
    ft.apply(Vg.conj(), X).abs().sum().backward()
    Vr = V.clone().requires_grad_()
    ft.apply(Vr.conj().resolve_conj(), X).abs().sum().backward()
    torch.testing.assert_close(Vg.grad, Vr.grad)


def test_torch_func_and_compile(device):
    V, X = samples(device)[0]
    G = crandn(*X.shape, seed=3, device=device)

    def loss(V, X):
        return (ft.apply(V, X) * G.conj()).real.sum()

    eager = torch.func.grad(loss, argnums=(0, 1))(V, X)
    Vr, Xr = V.clone().requires_grad_(), X.clone().requires_grad_()
    torch.autograd.backward(loss(Vr, Xr))
    torch.testing.assert_close(eager[0], Vr.grad)
    torch.testing.assert_close(eager[1], Xr.grad)
    Vb, Xb = crandn(3, 6, 4, seed=1, device=device), crandn(3, 6, 5, seed=2, device=device)
    torch.testing.assert_close(torch.func.vmap(ft.apply)(Vb, Xb), ft.apply(Vb, Xb))
    torch.testing.assert_close(torch.func.vmap(ft.apply, in_dims=(None, 0))(V, Xb),
                               ft.apply(V, Xb))
    fn = torch.compile(lambda V, X: ft.apply(V, X, True), backend="aot_eager", fullgraph=True)
    V.requires_grad_(), X.requires_grad_()
    assert torch.autograd.gradcheck(fn, (V, X))


# ---------------------------------------------------------------------------------------
# torch drop-ins against torch's own complex functions (an independent implementation)

def _lapack_inputs(device, dtype, batch=(), cols=4):
    A = crandn(*batch, 7, cols, dtype=dtype, seed=20, device=device)
    tau = crandn(*batch, 3, dtype=dtype, seed=21, device=device)
    return A, tau


@pytest.mark.parametrize("dtype", CDTYPES)
@pytest.mark.parametrize("batch", [(), (2,)])
def test_householder_product_matches_torch(device, dtype, batch):
    A, tau = _lapack_inputs(device, dtype, batch)
    got = ft.householder_product(A, tau)
    want = torch.linalg.householder_product(A, tau)
    close(got, want.cpu().numpy().astype(np.complex128), dtype, 7)
    close(got, ref_householder_product(A.cpu().numpy(), tau.cpu().numpy()), dtype, 7)
    # gradients against torch's autograd of its own function
    G = crandn(*got.shape, dtype=dtype, seed=22, device=device)
    mine = torch.autograd.grad(ft.householder_product(A.requires_grad_(), tau.requires_grad_()),
                               (A, tau), G)
    theirs = torch.autograd.grad(torch.linalg.householder_product(A, tau), (A, tau), G)
    for a, b in zip(mine, theirs):
        close(a, b.cpu().numpy().astype(np.complex128), dtype, 4 * 7 * 7)


@pytest.mark.parametrize("dtype", CDTYPES)
@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_ormqr_matches_torch(device, dtype, left, transpose):
    A, tau = _lapack_inputs(device, dtype, (2,), cols=3)
    C = crandn(2, *((7, 3) if left else (3, 7)), dtype=dtype, seed=23, device=device)
    got = ft.ormqr(A, tau, C, left, transpose)
    want = torch.ormqr(A, tau, C, left, transpose)
    close(got, want.cpu().numpy().astype(np.complex128), dtype, 7)
    close(got, ref_ormqr(A.cpu().numpy(), tau.cpu().numpy(), C.cpu().numpy(), left, transpose),
          dtype, 7)
    G = crandn(*got.shape, dtype=dtype, seed=24, device=device)
    args = (A.requires_grad_(), tau.requires_grad_(), C.requires_grad_())
    mine = torch.autograd.grad(ft.ormqr(*args, left, transpose), args, G)
    theirs = torch.autograd.grad(torch.ormqr(*args, left, transpose), args, G)
    for a, b in zip(mine, theirs):
        close(a, b.cpu().numpy().astype(np.complex128), dtype, 4 * 7 * 7)


def test_drop_in_gradcheck(device):
    A, tau = _lapack_inputs(device, torch.complex128)
    C = crandn(7, 3, seed=25, device=device)
    A3 = A[:, :3].clone().requires_grad_()
    A.requires_grad_(), tau.requires_grad_(), C.requires_grad_()
    assert torch.autograd.gradcheck(ft.householder_product, (A, tau))
    for left in (True, False):
        for transpose in (False, True):
            Cl = C if left else C.detach().mT.clone().requires_grad_()
            assert torch.autograd.gradcheck(
                lambda A, tau, C: ft.ormqr(A, tau, C, left, transpose), (A3, tau, Cl))


# ---------------------------------------------------------------------------------------
# Layers

def test_orthogonal_layer_complex(device):
    layer = ft.nn.Orthogonal(6, dtype=torch.complex128).to(device)
    W = layer.weight
    eye = torch.eye(6, dtype=W.dtype, device=W.device)
    assert (W.mH @ W - eye).abs().max() < 1e-12  # unitary
    x = crandn(4, 6, seed=30, device=device)
    torch.testing.assert_close(layer(x), x @ W.mT)  # y = x W^T, as nn.Linear
    torch.testing.assert_close(layer.inverse(layer(x)), x)
    layer(x).abs().sum().backward()
    assert layer.reflectors.grad is not None and layer.reflectors.grad.is_complex()


def test_orthogonal_parametrization_refuses_complex_as_torch():
    """torch's householder map refuses complex weights; so does fasth's (Hermitian
    reflectors reach only unitary matrices of determinant +-1, so an assigned weight could
    not be reproduced)."""
    lin = torch.nn.Linear(4, 4, dtype=torch.complex64)
    with pytest.raises(ValueError, match="does not support complex"):
        ft.nn.orthogonal(lin)


# ---------------------------------------------------------------------------------------
# Bad input: a named error

@pytest.mark.parametrize("vdt,xdt", [(torch.complex128, torch.float64),
                                     (torch.float64, torch.complex128),
                                     (torch.complex64, torch.complex128),
                                     (torch.complex64, torch.float64),
                                     (torch.complex128, torch.float32)])
def test_mixed_dtypes_are_named(vdt, xdt):
    V, X = torch.randn(5, 3, dtype=vdt), torch.randn(5, 2, dtype=xdt)
    with pytest.raises(TypeError, match=r"share one dtype \(V is .*, X is .*\)"):
        ft.apply(V, X)
    A, tau, C = torch.randn(5, 3, dtype=vdt), torch.randn(3, dtype=vdt), torch.randn(5, 2, dtype=xdt)
    with pytest.raises(TypeError, match=r"share one dtype \(A is .*, tau is .*, C is .*\)"):
        ft.ormqr(A, tau, C)
    with pytest.raises(TypeError, match=r"share one dtype \(A is .*, tau is .*\)"):
        ft.householder_product(A, torch.randn(3, dtype=xdt))


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_is_named():
    V = torch.randn(5, 3, dtype=torch.complex64).to(torch.complex32)
    with pytest.raises(TypeError, match="V has dtype complex32"):
        ft.matrix(V)


# ---------------------------------------------------------------------------------------
# Not yet: forward mode on complex arrays, and fasth.jax (whose reverse mode transposes the
# tangent pass): a named error, not numbers.

def test_torch_forward_mode_refuses_complex():
    V, X = samples("cpu")[0]
    with pytest.raises(Exception, match="forward mode .* real arrays only"):
        torch.func.jvp(lambda X: ft.apply(V, X), (X,), (torch.ones_like(X),))


def test_jax_refuses_complex():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import fasth.jax as fj

    with pytest.raises(TypeError, match="V has dtype complex64; expected"):
        fj.apply(jnp.ones((5, 3), jnp.complex64), jnp.ones((5, 2), jnp.complex64))
    with pytest.raises(TypeError, match="A has dtype complex64; expected"):
        fj.householder_product(jnp.ones((5, 3), jnp.complex64), jnp.ones((3,), jnp.complex64))


def test_functional_api_refuses_lazy_conjugates():
    import fasth

    V, X = samples("cpu")[0]
    with pytest.raises(TypeError, match="lazily conjugated"):
        fasth.apply(V, X.conj())
    torch.testing.assert_close(fasth.apply(V, X.conj().resolve_conj()), ft.apply(V, X.conj()))
