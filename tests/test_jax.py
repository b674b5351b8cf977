"""fasth.jax: the XLA FFI custom calls under jit, grad, vmap, checkpoint and shard_map, against
the float64 loop-over-reflectors reference. CUDA cases skip without a JAX GPU backend. The
layers: test_jax_layers.py; drop-ins: test_jax_drop_ins.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jax_helpers import _x64, close, dev, jax, jnp, put, randn  # noqa: F401 (fixtures)
from jax.test_util import check_grads  # noqa: E402

import fasth  # noqa: E402
import fasth.jax as fj  # noqa: E402
from reference import ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad  # noqa: E402


# Shapes: (V batch, X batch, d, k, n); blocks of several sizes, short last blocks, n >> d
# (the materialised strategy), shared V.
SHAPES = [((), (), 7, 5, 3), ((), (3,), 16, 16, 4), ((2,), (2,), 33, 20, 5),
          ((), (2, 2), 10, 4, 64), ((1,), (3,), 12, 9, 2)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bv,bx,d,k,n", SHAPES)
def test_apply_matches_reference(dev, dtype, transpose, bv, bx, d, k, n):
    V, X = randn(*bv, d, k, dtype=dtype), randn(*bx, d, n, dtype=dtype, seed=1)
    out = jax.jit(fj.apply, static_argnums=2)(put(V, dev), put(X, dev), transpose)
    assert out.shape == (*bx, d, n) and out.dtype == dtype
    close(out, ref_apply(V, X, transpose), dtype, d)


@pytest.mark.parametrize("d,k,n", [(100, 40, 5), (64, 64, 20)])
def test_per_example_gradients_of_a_shared_v(dev, d, k, n):
    """vmap of a gradient with V shared: the forward's factors (one V, sized for every
    device's plan, whose blocks differ) broadcast to the per-example backward, which reads
    them at the buffer's stride; likewise Reflectors' later applies."""
    V, X, G = randn(d, k), randn(3, d, n, seed=1), randn(3, d, n, seed=2)
    rdV = sum(ref_apply_grad(V, X[i], G[i])[0] for i in range(3))
    per = jax.vmap(lambda x, g: jax.vjp(lambda V: fj.apply(V, x), put(V, dev))[1](g)[0])
    close(per(put(X, dev), put(G, dev)).sum(0), rdV, "float64", d)
    r = fj.Reflectors(put(V, dev))
    close(jax.vmap(r.apply)(put(X, dev)), np.stack([ref_apply(V, x) for x in X]), "float64", d)


@pytest.mark.parametrize("transpose", [False, True])
def test_rows_far_apart(dev, transpose):
    """V's rows 256 elements apart (k = 256): fasth.jax's Y (normalised into the factors) and
    the buffers laid out as it take padded rows; values and gradients match the reference,
    from the tape and from the output (under vmap)."""
    d, k, n = 262, 256, 5
    V, X, G = randn(d, k), randn(2, d, n, seed=1), randn(2, d, n, seed=2)
    f = lambda V, X: fj.apply(V, X, transpose)  # noqa: E731
    out, vjp = jax.vjp(jax.jit(f), put(V, dev), put(X, dev))
    close(out, ref_apply(V, X, transpose), "float64", d)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    dV, dX = vjp(put(G, dev))
    close(dV, rdV, "float64", d)
    close(dX, rdX, "float64", d)
    dVs = jax.vmap(lambda x, g: jax.vjp(lambda V: f(V, x), put(V, dev))[1](g)[0])(put(X, dev), put(G, dev))
    close(dVs.sum(0), rdV, "float64", d)
    W, GU = randn(k, k, seed=3), randn(k, k, seed=4)
    U, vjp = jax.vjp(fj.matrix, put(W, dev))
    close(U, ref_matrix(W), "float64", k)
    close(vjp(put(GU, dev))[0], ref_matrix_grad(W, GU), "float64", k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("thin", [False, True])
def test_matrix_matches_reference(dev, dtype, thin):
    V = randn(2, 19, 11, dtype=dtype)
    U = jax.jit(fj.matrix, static_argnums=1)(put(V, dev), thin)
    close(U, ref_matrix(V, thin), dtype, 19)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bv,bx,d,k,n", SHAPES[:4])
def test_apply_grads(dev, transpose, bv, bx, d, k, n):
    V, X = put(randn(*bv, d, k), dev), put(randn(*bx, d, n, seed=1), dev)
    check_grads(lambda V, X: fj.apply(V, X, transpose), (V, X), order=1, modes=["rev"])
    G = randn(*bx, d, n, seed=2)
    dV, dX = jax.vjp(lambda V, X: fj.apply(V, X, transpose), V, X)[1](put(G, dev))
    rV, rX = ref_apply_grad(np.asarray(V), np.asarray(X), G, transpose)
    close(dV, rV, "float64", d)
    close(dX, rX, "float64", d)


@pytest.mark.parametrize("thin", [False, True])
def test_matrix_grads(dev, thin):
    V = put(randn(2, 13, 6), dev)
    check_grads(lambda V: fj.matrix(V, thin), (V,), order=1, modes=["rev"])
    G = randn(2, 13, 6 if thin else 13, seed=3)
    (dV,) = jax.vjp(lambda V: fj.matrix(V, thin), V)[1](put(G, dev))
    close(dV, ref_matrix_grad(np.asarray(V), G, thin), "float64", 13)


def _per_example(V, X, transpose=False):
    """Reference for vmap: one call per entry of the mapped axis."""
    return np.stack([ref_apply(V[i] if V.ndim == X.ndim else V, X[i], transpose)
                     for i in range(X.shape[0])])


@pytest.mark.parametrize("inner", [(), (3,)])
def test_vmap_over_x_and_over_both(dev, inner):
    B, d, k, n = 4, 12, 7, 3
    V, Vb = randn(d, k), randn(B, *inner, d, k, seed=4)
    X = randn(B, *inner, d, n, seed=5)
    out = jax.jit(jax.vmap(fj.apply, in_axes=(None, 0)))(put(V, dev), put(X, dev))
    close(out, _per_example(V, X), "float64", d)
    out = jax.jit(jax.vmap(fj.apply, in_axes=(0, 0)))(put(Vb, dev), put(X, dev))
    close(out, _per_example(Vb, X), "float64", d)
    Vi = randn(*inner, d, k, seed=6)  # V batched inside each entry, mapped over X only
    out = jax.vmap(fj.apply, in_axes=(None, 0))(put(Vi, dev), put(X, dev))
    close(out, np.stack([ref_apply(Vi, X[i]) for i in range(B)]), "float64", d)
    # V mapped, X not
    out = jax.vmap(fj.apply, in_axes=(0, None))(put(Vb, dev), put(X[0], dev))
    close(out, np.stack([ref_apply(Vb[i], X[0]) for i in range(B)]), "float64", d)


def test_vmap_grads(dev):
    """grad of vmap (dV summed) and vmap of grad (per-example dV), nested vmap, matrix."""
    B, d, k, n = 3, 10, 6, 2
    V, X, G = put(randn(d, k), dev), put(randn(B, d, n, seed=1), dev), randn(B, d, n, seed=2)
    loss = lambda V, X, G: jnp.sum(fj.apply(V, X) * G)  # noqa: E731
    dV = jax.grad(lambda V: jnp.sum(jax.vmap(loss, (None, 0, 0))(V, X, put(G, dev))))(V)
    close(dV, ref_apply_grad(np.asarray(V), np.asarray(X), G)[0], "float64", d)
    per = jax.vmap(jax.grad(loss), (None, 0, 0))(V, X, put(G, dev))
    want = np.stack([ref_apply_grad(np.asarray(V), np.asarray(X)[i], G[i])[0] for i in range(B)])
    close(per, want, "float64", d)
    nested = jax.vmap(jax.vmap(fj.apply, (None, 0)), (None, 0))(V, jnp.reshape(X, (B, 1, d, n)))
    close(nested[:, 0], _per_example(np.asarray(V), np.asarray(X)), "float64", d)
    Vs = put(randn(B, d, k, seed=7), dev)
    close(jax.vmap(fj.matrix)(Vs), ref_matrix(np.asarray(Vs)), "float64", d)
    check_grads(jax.vmap(lambda V: fj.matrix(V, True)), (Vs,), order=1, modes=["rev"])


@pytest.mark.parametrize("transpose", [False, True])
def test_gradient_of_input_gradient(dev, transpose):
    # A gradient penalty differentiates dL/dX, in V and X: check_grads of (V, X) -> dL/dX.
    def input_grad(V, X):
        return jax.grad(lambda X: jnp.tanh(fj.apply(V, X, transpose, block=2)).sum())(X)

    V, X = put(randn(6, 4), dev), put(randn(6, 3, seed=1), dev)
    check_grads(input_grad, (V, X), order=1, modes=["rev"])
    check_grads(jax.vmap(input_grad, (None, 0)), (V, put(randn(2, 6, 3, seed=2), dev)), order=1,
                modes=["rev"])

    # A layer's penalty equals that of its dense weight, in every parameter.
    nnx = pytest.importorskip("flax.nnx")
    layer = fj.SVDDense(6, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    x = put(randn(3, 6, seed=3), dev)

    def penalty(m, dense):
        f = (lambda x: x @ m.weight.T + m.bias[...]) if dense else m
        return jnp.sum(jax.grad(lambda x: jnp.tanh(f(x)).sum())(x) ** 2)

    for got, want in zip(jax.tree.leaves(nnx.grad(penalty)(layer, False)),
                         jax.tree.leaves(nnx.grad(penalty)(layer, True))):
        close(got, want, "float64", 6)

    # dV has no second derivative: differentiating it again says so.
    for op in (lambda V: fj.apply(V, X), fj.matrix):
        with pytest.raises(NotImplementedError, match="gradient of V cannot be differentiated"):
            jax.grad(lambda V: jnp.sum(jax.grad(lambda V: jnp.sum(op(V) ** 3))(V) ** 2))(V)


def test_checkpoint_and_training_step(dev):
    nnx = pytest.importorskip("flax.nnx")
    d, N = 8, 16
    x, t = put(randn(N, d, seed=1), dev), put(randn(N, d, seed=2), dev)
    layer = fj.SVDDense(d, rngs=nnx.Rngs(0), param_dtype=jnp.float64)

    def loss(model, remat):
        f = jax.checkpoint(lambda x: model(x)) if remat else model
        return jnp.mean((f(x) - t) ** 2)

    g = nnx.grad(loss)(layer, False)
    g_remat = nnx.grad(loss)(layer, True)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
        close(a, b, "float64", d)

    # The same gradient through dense matrices built by the reference (finite differences
    # of the reference would do too; this checks the chain through U and Vt).
    U, Vt, s, b = (np.asarray(p) for p in (layer.U_reflectors[...], layer.V_reflectors[...], layer.S[...],
                                         layer.bias[...]))
    W = ref_matrix(U) * s @ ref_matrix(Vt).T
    R = np.asarray(x) @ W.T + b - np.asarray(t)
    dW = 2 * R.T @ np.asarray(x) / R.size
    close(g.bias[...], 2 * R.sum(0) / R.size, "float64", d)
    close(g.S[...], np.einsum("jl,lj->j", ref_matrix(U).T @ dW, ref_matrix(Vt)), "float64", d)
    close(g.U_reflectors[...], ref_matrix_grad(U, dW @ (ref_matrix(Vt) * s)), "float64", d)

    optimizer = nnx.Optimizer(layer, __import__("optax").sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model, True)
        optimizer.update(model, grads)
        return value

    first = step(layer, optimizer)
    for _ in range(20):
        last = step(layer, optimizer)
    assert last < first


@pytest.mark.parametrize("transpose", [False, True])
def test_reflectors_reuse_factors(dev, transpose):
    """Reflectors(V).apply is apply(V, .) in values and gradients over several uses (under
    jit, grad and vmap, V shared or mapped); the later applies are fasth_forward_with calls."""
    V, X = (jax.device_put(a, dev) for a in (randn(12, 9), randn(3, 12, 4, seed=1)))

    def twice(V, X, reuse):
        if reuse:
            R = fj.Reflectors(V, block=4)
            return R.apply(jnp.tanh(R.apply(X, transpose)), transpose)
        return fj.apply(V, jnp.tanh(fj.apply(V, X, transpose, block=4)), transpose, block=4)

    ref = twice(V, X, False)
    np.testing.assert_allclose(jax.jit(twice, static_argnums=2)(V, X, True), ref, rtol=0, atol=1e-12)
    check_grads(lambda V, X: twice(V, X, True), (V, X[0]), order=1, modes=["rev"])
    for in_axes, Vs in (((None, 0), V), ((0, 0), jnp.stack([V, 2 * V, -V]))):
        got = jax.vmap(lambda V, X: twice(V, X, True), in_axes)(Vs, X)
        np.testing.assert_allclose(got, jax.vmap(lambda V, X: twice(V, X, False), in_axes)(Vs, X),
                                   rtol=0, atol=1e-12)
    loss = lambda V, X, reuse: twice(V, X, reuse).sum()  # noqa: E731
    for a, b in zip(jax.grad(loss, (0, 1))(V, X, True), jax.grad(loss, (0, 1))(V, X, False)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    hlo = jax.jit(twice, static_argnums=2).lower(V, X, True).as_text()
    assert hlo.count("fasth_forward_with") == 1 and hlo.count("fasth_forward") == 2


def test_lowered_hlo_has_our_custom_calls():
    V, X = jnp.asarray(randn(6, 4)), jnp.asarray(randn(6, 3))
    hlo = jax.jit(jax.grad(lambda V, X: jnp.sum(fj.apply(V, X) ** 2), (0, 1))).lower(V, X).as_text()
    assert hlo.count("fasth_forward") == 1 and hlo.count("fasth_backward") == 1
    assert "callback" not in hlo.lower()
    hlo = jax.jit(jax.grad(lambda V: jnp.sum(fj.matrix(V) ** 2))).lower(V).as_text()
    assert hlo.count("fasth_forward") == 1 and hlo.count("fasth_backward") == 1


def test_bad_input_names_the_argument():
    V, X = jnp.ones((6, 4)), jnp.ones((6, 3))
    with pytest.raises(TypeError, match="X has dtype int32"):
        fj.apply(V, jnp.ones((6, 3), jnp.int32))
    with pytest.raises(ValueError, match="X has 5 rows"):
        fj.apply(V, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="V must have at least 2 dimensions"):
        fj.apply(jnp.ones(6), X)
    with pytest.raises(TypeError, match="V is float64, X is float32"):
        fj.apply(V.astype(jnp.float64), X.astype(jnp.float32))
    with pytest.raises(ValueError, match="batch dimensions of V"):
        fj.apply(jnp.ones((2, 6, 4)), jnp.ones((3, 6, 3)))
    with pytest.raises(ValueError, match="tau has 5 reflectors but A has only 4 columns"):
        fj.householder_product(jnp.ones((6, 4)), jnp.ones(5))
    with pytest.raises(ValueError, match="block must be"):
        fj.apply(V, X, block=0)
    with pytest.raises(ValueError, match="strategy must be one of"):
        fj.apply(V, X, strategy="fast")
    with pytest.raises(TypeError, match="V must be an array"):
        fj.matrix([[1.0]])


def test_functional_api_takes_jax_arrays_over_dlpack():
    V, X = randn(10, 6), randn(2, 10, 3, seed=1)
    close(fasth.apply(jnp.asarray(V), jnp.asarray(X)), ref_apply(V, X), "float64", 10)
    close(fasth.matrix(jnp.asarray(V)), ref_matrix(V), "float64", 10)
    G = randn(2, 10, 3, seed=2)
    out = ref_apply(V, X)
    dV, dX = fasth.apply_backward(jnp.asarray(V), jnp.asarray(out), jnp.asarray(G))
    close(dV, ref_apply_grad(V, X, G)[0], "float64", 10)


def test_empty_batch_gives_empty_results():
    # A V with no batch entries is not the shared V: nothing of it is read.
    V, X = jnp.ones((0, 4, 2)), jnp.ones((0, 4, 3))
    assert fj.apply(V, X).shape == (0, 4, 3)
    assert fj.matrix(V).shape == (0, 4, 4)
    assert jax.grad(lambda V: fj.apply(V, X).sum())(V).shape == (0, 4, 2)


def test_functional_api_returns_jax_arrays():
    assert isinstance(fasth.apply(jnp.ones((4, 2)), jnp.ones((4, 3))), jax.Array)


def test_shard_map_over_two_cpu_devices():
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, PartitionSpec as P
        import fasth, fasth.jax as fj
        assert len(jax.devices()) == 2
        mesh = Mesh(np.array(jax.devices()), ("b",))
        rng = np.random.default_rng(0)
        V = rng.standard_normal((8, 5)).astype(np.float32)
        X = rng.standard_normal((4, 8, 3)).astype(np.float32)
        def step(V, X):  # dV of the invariant V: summed over the devices
            out = fj.apply(V, X)
            dV, dX = jax.grad(lambda V, X: jnp.sum(fj.apply(V, X) ** 2), (0, 1))(V, X)
            return out, dV, dX
        f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("b")),
                                  out_specs=(P("b"), P(), P("b"))))
        out, dV, dX = f(V, X)
        assert len(out.sharding.device_set) == 2
        np.testing.assert_allclose(np.asarray(out), fasth.apply(V, X), atol=1e-5)
        rV, rX = fasth.apply_backward(V, fasth.apply(V, X), 2 * fasth.apply(V, X))
        np.testing.assert_allclose(np.asarray(dV), rV, atol=1e-4)
        np.testing.assert_allclose(np.asarray(dX), rX, atol=1e-4)
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
