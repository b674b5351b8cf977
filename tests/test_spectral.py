"""Exact spectral control (fasth.torch.spectral, fasth.jax_spectral) and the spectral demo.

Every reported norm is compared with a dense SVD of the weight the layer actually uses;
the convolutions' operator norms with the SVD of their dense Jacobian."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fasth.torch.spectral import (BoundedSingularValues, SpectralConv1x1, SpectralConv2d,  # noqa: E402
                                  SpectralLinear)

MODES = ("normalize", "sigmoid", "clip")
SHAPES = [(12, 12), (12, 7), (7, 12)]  # (in, out): square, narrowing, widening


def svd_norm(W) -> float:
    return float(torch.linalg.matrix_norm(torch.as_tensor(W).detach().double(), 2))


def _random_layer(in_f, out_f, mode, dtype=torch.float64, bound=0.8, seed=0):
    torch.manual_seed(seed)
    layer = SpectralLinear(in_f, out_f, bound=bound, mode=mode, lo=0.1 if mode == "clip" else 0.0,
                           dtype=dtype)
    with torch.no_grad():
        layer.raw.normal_()
        layer.bias.normal_()
    return layer


def _train(module, steps=5, lr=0.3, in_shape=None, dtype=torch.float64):
    """A few Adam steps with a large learning rate on a random regression loss."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(*in_shape, generator=g, dtype=dtype)
        loss = module(x).sin().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_f,out_f", SHAPES)
def test_linear_norm_is_exact(in_f, out_f, mode):
    layer = _random_layer(in_f, out_f, mode)
    for stage in ("init", "trained"):
        W = layer.weight
        assert abs(float(layer.spectral_norm().detach()) - svd_norm(W)) < 1e-12, stage
        assert float(layer.spectral_norm().detach()) <= layer.bound * (1 + 1e-12), stage
        if mode == "normalize":
            assert float(layer.spectral_norm().detach()) == pytest.approx(layer.bound, abs=1e-12)
        s = layer.S.detach()
        assert float(s.abs().max()) <= layer.bound * (1 + 1e-12)
        # Both forward regimes (apply to activations; materialised weight) use that W.
        for n in (3, 2 * max(in_f, out_f)):
            x = torch.randn(n, in_f, dtype=torch.float64)
            ref = torch.nn.functional.linear(x, W, layer.bias)
            torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
        _train(layer, in_shape=(5, in_f))
        assert not torch.equal(layer.weight, W)


@pytest.mark.parametrize("mode", MODES)
def test_float32_norm_within_1e5(mode):
    layer = _random_layer(64, 48, mode, dtype=torch.float32)
    _train(layer, steps=10, in_shape=(256, 64), dtype=torch.float32)
    assert abs(float(layer.spectral_norm().detach()) - svd_norm(layer.weight)) < 1e-5
    assert svd_norm(layer.weight) <= layer.bound + 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_through_bound(mode):
    layer = _random_layer(6, 4, mode)
    if mode == "clip":  # keep away from the kinks at lo and bound
        with torch.no_grad():
            layer.raw.copy_(torch.tensor([0.2, 0.35, 0.5, 0.7], dtype=torch.float64))
    x = torch.randn(3, 6, dtype=torch.float64)
    names = ["parametrizations.S.original", "U_reflectors", "V_reflectors", "bias"]
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}
    assert set(params) == set(names)

    def f(raw, U, V, b, x):
        return torch.func.functional_call(layer, dict(zip(names, (raw, U, V, b))), (x,))

    x.requires_grad_()
    assert torch.autograd.gradcheck(f, tuple(params[k] for k in names) + (x,))
    # The norm itself, through the bounded map.
    bsv = BoundedSingularValues(0.8, mode, lo=0.1 if mode == "clip" else 0.0)
    raw = params["parametrizations.S.original"]
    assert torch.autograd.gradcheck(lambda r: bsv(r).abs().max() + bsv(r).square().sum(), (raw,))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        SpectralLinear(3, 3, mode="power")
    with pytest.raises(ValueError, match="bound"):
        SpectralLinear(3, 3, bound=0.0)
    with pytest.raises(ValueError, match="lo"):
        SpectralLinear(3, 3, mode="clip", bound=1.0, lo=2.0)
    with pytest.raises(ValueError, match="SpectralConv1x1"):
        SpectralConv1x1(3, 4)(torch.randn(2, 5, 4, 4))


def _operator_norm(module, in_shape) -> float:
    """Exact operator norm of a linear map (bias removed) from its dense Jacobian."""
    x0 = torch.zeros(1, *in_shape, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda x: module(x) - module(x0), x0)
    n_in = math.prod(in_shape)
    return svd_norm(J.reshape(-1, n_in))


@pytest.mark.parametrize("mode", MODES)
def test_conv1x1_norm_is_operator_norm(mode):
    torch.manual_seed(0)
    conv = SpectralConv1x1(5, 3, bound=0.7, mode=mode, dtype=torch.float64)
    with torch.no_grad():
        conv.raw.normal_()
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, conv.weight[:, :, None, None], conv.bias)
    torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)
    _train(conv, in_shape=(2, 5, 4, 3))
    assert abs(_operator_norm(conv, (5, 4, 3)) - float(conv.spectral_norm().detach())) < 1e-12


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv_kxk_bound(stride, padding):
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, (3, 2), stride=stride, padding=padding, bound=0.9, mode="sigmoid",
                          dtype=torch.float64)
    with torch.no_grad():
        conv.svd.raw.normal_()
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, conv.kernel(), conv.svd.bias, stride, padding)
    torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-12)
    _train(conv, in_shape=(2, 2, 6, 5))
    K = conv.kernel().reshape(3, -1)
    assert abs(float(conv.reshaped_norm().detach()) - svd_norm(K)) < 1e-12
    assert float(conv.spectral_norm().detach()) == pytest.approx(math.sqrt(6) * svd_norm(K), rel=1e-12)
    assert _operator_norm(conv, (2, 6, 5)) <= float(conv.spectral_norm().detach()) * (1 + 1e-12)


# The demo ---------------------------------------------------------------------------------

def _tiny_args(tmp_path, framework="torch") -> argparse.Namespace:
    from fasth.demos.spectral import parser

    return parser().parse_args(["--framework", framework, "--epochs", "2", "--batch", "64",
                                "--width", "32", "--blocks", "1", "--timing-width", "16",
                                "--timing-steps", "1", "--lr", "0.03", "--no-progress",
                                "--out", str(tmp_path)])


def _tiny_data(n_train=256, n_test=64):
    from fasth.demos.spectral.common import load_digits

    Xtr, ytr, Xte, yte = load_digits(0)
    return Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]


def test_demo_measures_power_iteration_norms_by_svd(tmp_path):
    from fasth.demos.spectral import torch_demo

    args = _tiny_args(tmp_path)
    data = tuple(torch.as_tensor(a) for a in _tiny_data())
    res, _, model = torch_demo.run_classifier("power", data, args, None)
    layers = torch_demo.spectral_layers(model)
    assert len(layers) == len(res["true_norms"]) == 4
    gaps = []
    for layer, reported, claimed in zip(layers, res["true_norms"], res["claimed"]):
        # The weight an evaluation forward uses, rebuilt here from torch's own state.
        p = layer.lin.parametrizations.weight
        W, u, v = p.original.detach(), p[0]._u, p[0]._v
        W_eff = layer.bound * W / torch.dot(u, W @ v)
        x = torch.randn(5, W.shape[1])
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, W_eff, layer.lin.bias))
        assert reported == pytest.approx(svd_norm(W_eff), rel=1e-6)
        gaps.append(abs(reported - claimed))
    assert max(gaps) > 1e-4  # not the estimate (which claims exactly 1)
    res, _, model = torch_demo.run_classifier("fasth", data, args, None)
    for layer, reported, claimed in zip(torch_demo.spectral_layers(model), res["true_norms"], res["claimed"]):
        assert reported == pytest.approx(svd_norm(layer.weight), abs=1e-12)
        assert abs(reported - claimed) < 1e-5
    assert res["lipschitz"] == pytest.approx(math.prod(res["true_norms"]))


def test_demo_runs(tmp_path, capsys):
    from fasth.demos import spectral

    argv = ["--epochs", "1", "--batch", "128", "--width", "32", "--blocks", "1",
            "--timing-width", "16", "--timing-steps", "1", "--no-progress", "--out", str(tmp_path)]
    assert spectral.main(argv) == 0
    out = capsys.readouterr().out
    assert "Lipschitz classifier" in out and "i-ResNet" in out
    res = json.loads((tmp_path / "spectral.json").read_text())
    assert (tmp_path / "spectral.png").stat().st_size > 0
    fasth_res = res["iresnet"]["fasth"]
    assert fasth_res["converged"] and fasth_res["recon_err"] < 1e-3
    assert max(fasth_res["block_lip"]) <= 0.9 + 1e-5
    assert max(res["classifier"]["fasth"]["true_norms"]) <= 1 + 1e-5
    from fasth.bench import record

    rows = record.read(tmp_path / record.ROWS)  # each run and timing on disk as it ended
    assert [r["method"] for r in rows["classifier"]] == [r["method"] for r in rows["iresnet"]] == ["power", "fasth"]
    assert len(rows["timing"]) == 4 and rows["iresnet"][1]["iters"] == fasth_res["iters"]
    assert "s med/max" in out and "inversion takes more iterations" in out and "exact norm" in out


# JAX ----------------------------------------------------------------------------------------

def _jax():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    return jax


def _jax_layer(in_f, out_f, mode, dtype, bound=0.8, seed=0):
    jax = _jax()
    from flax import nnx

    from fasth.jax.spectral import SpectralDense

    layer = SpectralDense(in_f, out_f, bound=bound, mode=mode, lo=0.1 if mode == "clip" else 0.0,
                          rngs=nnx.Rngs(seed), param_dtype=dtype)
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    layer.raw[...] = jax.random.normal(k1, layer.raw[...].shape, dtype)
    layer.bias[...] = jax.random.normal(k2, layer.bias[...].shape, dtype)
    return layer


def _jax_train(module, in_shape, dtype, steps=3, lr=0.3):
    jax = _jax()
    import optax
    from flax import nnx

    opt = nnx.Optimizer(module, optax.adam(lr), wrt=nnx.Param)
    key = jax.random.key(7)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        x = jax.random.normal(sub, in_shape, dtype)
        grads = nnx.grad(lambda m: jax.numpy.sum(jax.numpy.sin(m(x))))(module)
        opt.update(module, grads)


def np_norm(W) -> float:
    return float(np.linalg.norm(np.asarray(W, np.float64), 2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_f,out_f", SHAPES)
def test_jax_dense_norm_is_exact(in_f, out_f, mode):
    jax = _jax()
    jnp = jax.numpy
    with jax.enable_x64(True):
        layer = _jax_layer(in_f, out_f, mode, jnp.float64)
        for stage in ("init", "trained"):
            W = layer.weight
            assert abs(float(layer.spectral_norm()) - np_norm(W)) < 1e-12, stage
            assert float(jnp.max(jnp.abs(layer.singular_values()))) <= layer.bound * (1 + 1e-12)
            if mode == "normalize":
                assert float(layer.spectral_norm()) == pytest.approx(layer.bound, abs=1e-12)
            for n in (3, 2 * max(in_f, out_f)):
                x = jax.random.normal(jax.random.key(n), (n, in_f), jnp.float64)
                np.testing.assert_allclose(layer(x), x @ W.T + layer.bias[...], rtol=1e-12, atol=1e-12)
            _jax_train(layer, (5, in_f), jnp.float64)
            assert not np.array_equal(np.asarray(layer.weight), np.asarray(W))


def test_jax_float32_norm_within_1e5():
    jax = _jax()
    for mode in MODES:
        layer = _jax_layer(64, 48, mode, jax.numpy.float32)
        _jax_train(layer, (256, 64), jax.numpy.float32, steps=5)
        assert abs(float(layer.spectral_norm()) - np_norm(layer.weight)) < 1e-5
        assert np_norm(layer.weight) <= layer.bound + 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_jax_check_grads_through_bound(mode):
    jax = _jax()
    jnp = jax.numpy
    from flax import nnx
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        layer = _jax_layer(6, 4, mode, jnp.float64)
        if mode == "clip":  # away from the kinks
            layer.raw[...] = jnp.array([0.2, 0.35, 0.5, 0.7])
        graphdef, state = nnx.split(layer)
        x = jax.random.normal(jax.random.key(3), (3, 6), jnp.float64)

        def f(raw, U, Vt, x):
            st = jax.tree.map(lambda a: a, state)
            st["raw"], st["U_reflectors"], st["V_reflectors"] = nnx.Param(raw), nnx.Param(U), nnx.Param(Vt)
            m = nnx.merge(graphdef, st)
            return jnp.concatenate([m(x).ravel(), m.spectral_norm()[None]])

        check_grads(f, (layer.raw[...], layer.U_reflectors[...], layer.V_reflectors[...], x), order=1, modes=["rev"])


def _jax_operator_norm(f, in_shape) -> float:
    jax = _jax()
    x0 = jax.numpy.zeros((1, *in_shape), jax.numpy.float64)
    J = jax.jacfwd(lambda x: f(x) - f(x0))(x0)
    return np_norm(np.asarray(J).reshape(-1, math.prod(in_shape)))


def test_jax_convolutions():
    jax = _jax()
    jnp = jax.numpy
    from flax import nnx

    from fasth.jax.spectral import SpectralConv, SpectralConv1x1

    with jax.enable_x64(True):
        c1 = SpectralConv1x1(5, 3, bound=0.7, mode="sigmoid", rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        c1.raw[...] = jax.random.normal(jax.random.key(1), (3,), jnp.float64)
        assert abs(_jax_operator_norm(c1, (4, 3, 5)) - float(c1.spectral_norm())) < 1e-12
        for strides, padding in [(1, "SAME"), (2, "VALID")]:
            c = SpectralConv(2, 3, (3, 2), strides, padding, bound=0.9, mode="sigmoid",
                             rngs=nnx.Rngs(0), param_dtype=jnp.float64)
            c.svd.raw[...] = jax.random.normal(jax.random.key(2), (3,), jnp.float64)
            x = jax.random.normal(jax.random.key(3), (2, 6, 5, 2), jnp.float64)
            ref = jax.lax.conv_general_dilated(x, c.kernel(), (strides, strides), padding,
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + c.svd.bias[...]
            np.testing.assert_allclose(c(x), ref, rtol=1e-12, atol=1e-12)
            # The kernel is the reshaped SVD weight: K[o, (i, j, c)] = kernel[i, j, c, o].
            K = np.asarray(c.kernel()).transpose(3, 0, 1, 2).reshape(3, -1)
            np.testing.assert_allclose(K, c.svd.weight, rtol=0, atol=0)
            assert abs(float(c.reshaped_norm()) - np_norm(K)) < 1e-12
            assert _jax_operator_norm(c, (6, 5, 2)) <= float(c.spectral_norm()) * (1 + 1e-12)


def test_jax_demo_measures_power_iteration_norms_by_svd(tmp_path):
    jax = _jax()
    jnp = jax.numpy
    from fasth.demos.spectral import jax_demo

    args = _tiny_args(tmp_path, "jax")
    Xtr, ytr, Xte, yte = _tiny_data()
    data = (jnp.asarray(Xtr), jnp.asarray(ytr), jnp.asarray(Xte), yte)
    res, _, model = jax_demo.run_classifier("power", data, args, None)
    gaps = []
    for layer, reported, claimed in zip(model.spectral_layers(), res["true_norms"], res["claimed"]):
        W, u, v = (np.asarray(p[...], np.float64) for p in (layer.W, layer.u, layer.v))
        W_eff = layer.bound * W / (u @ W @ v)
        x = np.random.default_rng(0).standard_normal((5, W.shape[1])).astype(np.float32)
        np.testing.assert_allclose(layer(jnp.asarray(x)), x @ W_eff.T + np.asarray(layer.bias[...]),
                                   rtol=1e-4, atol=1e-5)
        assert reported == pytest.approx(np_norm(W_eff), rel=1e-5)
        gaps.append(abs(reported - claimed))
    assert max(gaps) > 1e-4
