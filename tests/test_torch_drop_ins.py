"""fasth.torch as a drop-in: outputs modified in place, the same numbers with and without
autograd, half precision as matmul, LAPACK's householder_product and ormqr as torch's, on
every device the `device` fixture offers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fasth.torch as ft
from reference import ref_matrix


@pytest.mark.parametrize("transpose", [False, True])
def test_outputs_modified_in_place_keep_correct_gradients(device, transpose):
    """Outputs are ordinary tensors: in-place ops on them (nflows' SVDLinear does
    `outputs *= diagonal`) are allowed, and the gradients are those of the same code on the
    dense matrix."""
    torch.manual_seed(0)
    V = torch.randn(6, 6, dtype=torch.float64, device=device, requires_grad=True)
    X = torch.randn(6, 4, dtype=torch.float64, device=device, requires_grad=True)
    s = torch.rand(6, 1, dtype=torch.float64, device=device) + 0.5

    def run(op):
        Y = op(V, X)
        Y *= s  # in place on the output
        Y += 1
        Z = op(V, Y)
        (gV, gX) = torch.autograd.grad(Z.square().sum(), (V, X))
        return Z, gV, gX

    fast = run(lambda V, X: ft.apply(V, X, transpose))
    dense = run(lambda V, X: (ft.matrix(V).mT if transpose else ft.matrix(V)) @ X)
    for a, b in zip(fast, dense):
        torch.testing.assert_close(a, b)
    U = ft.matrix(V)
    U.T.add_(1)  # in place on a view of the output, V alone needing a gradient
    (g,) = torch.autograd.grad((U * U).sum(), V)
    U2 = ft.matrix(V) + torch.ones(6, 6, dtype=torch.float64, device=device).T
    torch.testing.assert_close(g, torch.autograd.grad((U2 * U2).sum(), V)[0])


@pytest.mark.parametrize("shape", [(32, 10), (10, 10), (70, 70), (3, 40, 24)])
def test_same_numbers_with_and_without_autograd(device, shape):
    """A forward gives the same numbers whether autograd records it (it then keeps a tape for
    the backward) or not, as torch's own ops do."""
    torch.manual_seed(0)
    V = torch.randn(*shape, device=device)
    X = torch.randn(*shape[:-1], 5, device=device)
    Vg = V.clone().requires_grad_()
    for f in (lambda V: ft.matrix(V), lambda V: ft.matrix(V, thin=True),
              lambda V: ft.apply(V, X), lambda V: ft.apply(V, X.mT.contiguous().mT, True)):
        with torch.no_grad():
            plain = f(V)
        assert torch.equal(f(Vg).detach(), plain)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_half_precision_as_matmul(device, low):
    """Outside autocast, float16 and bfloat16 are accepted as torch.matmul takes them: the
    same dtype in and out, computed in float32."""
    torch.manual_seed(0)
    V = torch.randn(16, 16, device=device).to(low).requires_grad_()
    X = torch.randn(16, 5, device=device).to(low).requires_grad_()
    y = ft.apply(V, X)
    assert y.dtype == low
    want = ft.apply(V.float(), X.float())
    torch.testing.assert_close(y.float(), want, atol=3e-2, rtol=3e-2)
    y.float().square().sum().backward()
    assert V.grad.dtype == X.grad.dtype == low
    U = ft.matrix(V.detach())
    assert U.dtype == low
    torch.testing.assert_close(U.float(), ft.matrix(V.detach().float()), atol=3e-2, rtol=3e-2)
    with pytest.raises(TypeError, match="dtype"):  # mixed dtypes: refused, as matmul does
        ft.apply(V.float(), X)


@pytest.mark.parametrize("batch", [(), (2,)])
def test_householder_product_as_torchs(device, batch):
    from reference import ref_householder_product

    torch.manual_seed(0)
    A = torch.randn(*batch, 7, 5, dtype=torch.float64, device=device, requires_grad=True)
    tau = torch.randn(*batch, 4, dtype=torch.float64, device=device)
    tau[..., 1] = 0  # the identity
    tau.requires_grad_()
    got = ft.householder_product(A, tau)
    torch.testing.assert_close(got, torch.linalg.householder_product(A, tau))
    np.testing.assert_allclose(got.detach().cpu().numpy(),
                               ref_householder_product(A.detach().cpu().numpy(),
                                                       tau.detach().cpu().numpy()), atol=1e-12)
    G = torch.randn_like(got)
    mine = torch.autograd.grad((got * G).sum(), (A, tau))
    theirs = torch.autograd.grad((torch.linalg.householder_product(A, tau) * G).sum(), (A, tau))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(ft.householder_product, (A, tau))


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_ormqr_as_torchs(device, left, transpose):
    from reference import ref_ormqr

    torch.manual_seed(1)
    A = torch.randn(2, 6, 4, dtype=torch.float64, device=device, requires_grad=True)
    tau = torch.randn(2, 4, dtype=torch.float64, device=device, requires_grad=True)
    C = torch.randn(2, 6, 3, dtype=torch.float64, device=device)
    C = (C if left else C.mT.contiguous()).requires_grad_()
    got = ft.ormqr(A, tau, C, left, transpose)
    torch.testing.assert_close(got, torch.ormqr(A, tau, C, left, transpose))
    np.testing.assert_allclose(got.detach().cpu().numpy(),
                               ref_ormqr(*(t.detach().cpu().numpy() for t in (A, tau, C)), left,
                                         transpose), atol=1e-12)
    G = torch.randn_like(got)
    mine = torch.autograd.grad((got * G).sum(), (A, tau, C))
    theirs = torch.autograd.grad((torch.ormqr(A, tau, C, left, transpose) * G).sum(), (A, tau, C))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda A, t, C: ft.ormqr(A, t, C, left, transpose), (A, tau, C))


def test_lapack_drop_ins_name_bad_arguments():
    A, tau = torch.randn(6, 4), torch.randn(5)
    with pytest.raises(ValueError, match="tau has 5 reflectors but A has only 4 columns") as e:
        ft.householder_product(A, tau)
    assert isinstance(e.value, RuntimeError)  # as torch's own error is
    with pytest.raises(ValueError, match="A has more columns"):
        ft.householder_product(torch.randn(3, 4), torch.randn(2))
    with pytest.raises(ValueError, match="C has 5 rows"):
        ft.ormqr(A, torch.randn(4), torch.randn(5, 2))


def test_more_reflectors_than_rows_through_autograd(device):
    """nflows builds SVDLinear with features + 1 reflectors for odd feature counts."""
    torch.manual_seed(0)
    V = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    X = torch.randn(3, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda V, X: ft.apply(V, X), (V, X))
    assert torch.autograd.gradcheck(lambda V: ft.matrix(V), (V,))
    layer = ft.Orthogonal(3, 4).double().to(device)
    torch.testing.assert_close(layer.weight.T @ layer.weight,
                               torch.eye(3, dtype=torch.float64, device=device))


def test_large_workspaces_stay_alive_during_the_call():
    """Workspaces of more than glibc's mmap threshold (128 KiB) are unmapped as soon as they
    are freed: a buffer whose address alone reached the extension would fault here."""
    torch.manual_seed(0)
    V = torch.randn(1500, 16, dtype=torch.float64, requires_grad=True)
    X = torch.randn(1500, 12, dtype=torch.float64, requires_grad=True)
    U = ft.matrix(V)
    np.testing.assert_allclose(U.detach().numpy(), ref_matrix(V.detach().numpy()), atol=1e-12)
    U.sum().backward()
    Y = ft.apply(V, X, strategy="materialize")
    Y.sum().backward()
    assert torch.isfinite(V.grad).all() and torch.isfinite(X.grad).all()
