"""fasth.torch's layers: SVDLinear, Orthogonal and orthogonal() against dense torch and torch's
own parametrisations, on every device the `device` fixture offers."""

from __future__ import annotations

import pytest
import torch

import fasth.torch as ft
from reference import ref_matrix


@pytest.mark.parametrize("shape", [(5, 5), (7, 4), (3, 6), (70, 70), (72, 66), (65, 80)])
def test_svdlinear_matches_dense(device, shape):
    in_f, out_f = shape
    torch.manual_seed(0)
    layer = ft.SVDLinear(in_f, out_f).double().to(device)
    with torch.no_grad():
        layer.S.uniform_(0.5, 2.0), layer.bias.normal_()
    W = layer.weight
    for rows in (3, 4 * max(shape)):  # above 64 features, applied at 3 rows; else materialised
        x = torch.randn(rows, in_f, dtype=torch.float64, device=device)
        torch.testing.assert_close(layer(x), x @ W.T + layer.bias)
    assert layer.spectral_norm().item() == pytest.approx(torch.linalg.matrix_norm(W, 2).item())
    x = torch.randn(2, 3, in_f, dtype=torch.float64, device=device)
    assert layer(x).shape == (2, 3, out_f)


def test_svdlinear_inverse_and_logdet(device):
    torch.manual_seed(1)
    layer = ft.SVDLinear(6, 6).double().to(device)
    with torch.no_grad():
        layer.S.uniform_(0.3, 3.0), layer.bias.normal_()
    x = torch.randn(4, 6, dtype=torch.float64, device=device)
    torch.testing.assert_close(layer.inverse(layer(x)), x)
    torch.testing.assert_close(layer.logabsdet(), torch.linalg.slogdet(layer.weight)[1])
    with pytest.raises(ValueError, match="not square"):
        ft.SVDLinear(3, 4).inverse(torch.randn(2, 4))


def test_svdlinear_from_linear(device):
    lin = torch.nn.Linear(6, 4).double().to(device)
    layer = ft.SVDLinear.from_linear(lin)
    torch.testing.assert_close(layer.weight, lin.weight)
    x = torch.randn(3, 6, dtype=torch.float64, device=device)
    torch.testing.assert_close(layer(x), lin(x))


def test_orthogonal_layer(device):
    layer = ft.Orthogonal(8, 5).to(device)
    x = torch.randn(2, 3, 8, device=device)
    y = layer(x)
    torch.testing.assert_close(y, x @ layer.weight.T)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="features"):
        layer(torch.randn(3, 7, device=device))


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4)])
def test_orthogonal_parametrization(device, shape):
    out_f, in_f = shape
    lin = torch.nn.Linear(in_f, out_f).to(device)
    W0 = lin.weight.detach().clone()
    ft.orthogonal(lin)
    W = lin.weight
    eye = torch.eye(min(shape), device=device)
    torch.testing.assert_close(W @ W.T if out_f < in_f else W.T @ W, eye, atol=1e-5, rtol=0)
    Q, R = torch.linalg.qr(W0.T if out_f < in_f else W0)
    Q = Q * torch.sign(torch.diagonal(R))
    torch.testing.assert_close(W.T if out_f < in_f else W, Q, atol=1e-5, rtol=0)
    lin(torch.randn(2, in_f, device=device)).sum().backward()
    assert lin.parametrizations.weight.original.grad is not None


def test_features_last_without_copies():
    # (N, d) activations reach the core as the column-major d x N matrix they are.
    V = torch.randn(16, 16)
    x = torch.randn(64, 16)
    y = ft.apply(V, x.T)
    assert y.T.is_contiguous()
    torch.testing.assert_close(y, ft.matrix(V) @ x.T, atol=1e-5, rtol=1e-5)
    assert torch.from_numpy(ref_matrix(V.numpy())).shape == (16, 16)


def test_orthogonal_as_torchs(device):
    from torch.nn.utils import parametrizations as P

    conv = torch.nn.Conv2d(3, 4, 2).to(device)  # a (4, 3, 2, 2) kernel: a batch of 2 x 2
    ft.orthogonal(conv)
    K = conv.weight
    assert K.shape == (4, 3, 2, 2)
    torch.testing.assert_close(K.mT @ K, torch.eye(2, device=device).expand(4, 3, 2, 2),
                               atol=1e-5, rtol=0)
    lin = ft.orthogonal(torch.nn.Linear(3, 4).to(device))
    ref = P.orthogonal(torch.nn.Linear(3, 4).to(device))
    for m in (lin, ref):  # the same errors as torch's
        with pytest.raises(ValueError, match="Expected a matrix or batch of matrices of shape"):
            m.weight = torch.randn(5, 5, device=device)
    Q = torch.linalg.qr(torch.randn(4, 3, device=device))[0]
    lin.weight = Q  # an orthonormal weight is kept exactly
    torch.testing.assert_close(lin.weight, Q, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="Expected a matrix or batch"):
        ft.orthogonal(torch.nn.Linear(3, 4).to(device), "bias")
    with pytest.raises(ValueError, match="no parameter or buffer"):
        ft.orthogonal(torch.nn.Linear(3, 4), "nope")
    with pytest.raises(ValueError, match="orthogonal_map has to be one of"):
        ft.orthogonal(torch.nn.Linear(3, 4), orthogonal_map="qr")
    with pytest.raises(ValueError, match="torch's own"):
        ft.orthogonal(torch.nn.Linear(3, 4), orthogonal_map="cayley")
    with pytest.raises(ValueError, match="does not support complex"):
        ft.orthogonal(torch.nn.Linear(3, 3, dtype=torch.complex64))
    for triv in (True, False):
        m = ft.orthogonal(torch.nn.Linear(5, 5).to(device), orthogonal_map="householder",
                          use_trivialization=triv)
        torch.testing.assert_close(m.weight.T @ m.weight, torch.eye(5, device=device), atol=1e-5, rtol=0)
