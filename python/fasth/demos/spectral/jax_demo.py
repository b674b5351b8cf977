"""The spectral demo in JAX / Flax NNX: power-iteration spectral norm (one iteration per
training step, written as torch's ``spectral_norm`` does it) against
``fasth.jax.SpectralDense`` (exact, ``mode="normalize"``)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ...jax.spectral import SpectralDense
from .common import (BOUND_IRESNET, METHODS, classifier_result, collect, fixed_point, flatness,
                     iresnet_result, train_loop)


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), 1e-12)


class PowerDense(nnx.Module):
    """Dense layer ``x (bound * W / sigma_hat)^T + b`` with ``sigma_hat = u^T W v`` from one
    power iteration per training call (``u``, ``v`` kept as batch statistics, no gradient
    through them), initialised like ``torch.nn.Linear`` + ``spectral_norm`` (15 iterations)."""

    def __init__(self, in_features: int, out_features: int, bound: float = 1.0, *, rngs):
        lim = 1 / math.sqrt(in_features)
        self.W = nnx.Param(jax.random.uniform(rngs.params(), (out_features, in_features), jnp.float32, -lim, lim))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out_features,), jnp.float32, -lim, lim))
        u = _normalize(jax.random.normal(rngs.params(), (out_features,)))
        v = _normalize(jax.random.normal(rngs.params(), (in_features,)))
        W = self.W[...]
        for _ in range(15):
            u = _normalize(W @ v)
            v = _normalize(W.T @ u)
        self.u, self.v = nnx.BatchStat(u), nnx.BatchStat(v)
        self.bound = float(bound)

    def effective_weight(self) -> jax.Array:
        """The weight an evaluation call uses now (stored ``u``, ``v``; no iteration)."""
        W = self.W[...]
        return self.bound * W / (self.u[...] @ (W @ self.v[...]))

    def claimed_norm(self) -> float:
        return self.bound

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if train:
            W = jax.lax.stop_gradient(self.W[...])
            u = _normalize(W @ self.v[...])
            v = _normalize(W.T @ u)
            self.u[...], self.v[...] = u, v
        return x @ self.effective_weight().T + self.bias[...]


class FasthDense(SpectralDense):
    def __init__(self, in_features: int, out_features: int, bound: float = 1.0, *, rngs):
        super().__init__(in_features, out_features, bound=bound, mode="normalize", rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return super().__call__(x)

    def effective_weight(self) -> jax.Array:
        return self.weight

    def claimed_norm(self) -> float:
        return float(self.spectral_norm())


def make_dense(method: str, a: int, b: int, bound: float, rngs):
    if method == "power":
        return PowerDense(a, b, bound, rngs=rngs)
    if method == "fasth":
        return FasthDense(a, b, bound, rngs=rngs)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def maxmin(x: jax.Array) -> jax.Array:
    a, b = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([jnp.maximum(a, b), jnp.minimum(a, b)], axis=-1)


class MLP(nnx.Module):
    def __init__(self, method: str, dims: list[int], bound: float = 1.0, *, rngs):
        self.layers = nnx.List([make_dense(method, a, b, bound, rngs) for a, b in zip(dims[:-1], dims[1:])])

    def spectral_layers(self):
        return list(self.layers)

    def __call__(self, x, train: bool = False):
        for i, l in enumerate(self.layers):
            x = l(x, train)
            if i < len(self.layers) - 1:
                x = maxmin(x)
        return x


class Block(nnx.Module):
    def __init__(self, method: str, d: int, hidden: int, bound: float, *, rngs):
        self.l1 = make_dense(method, d, hidden, 1.0, rngs)
        self.l2 = make_dense(method, hidden, d, bound, rngs)

    def g(self, x, train: bool = False):
        return self.l2(maxmin(self.l1(x, train)), train)

    def __call__(self, x, train: bool = False):
        return x + self.g(x, train)


class IResNet(nnx.Module):
    def __init__(self, method: str, d: int, hidden: int, blocks: int, classes: int, bound: float, *, rngs):
        self.blocks = nnx.List([Block(method, d, hidden, bound, rngs=rngs) for _ in range(blocks)])
        self.head = nnx.Linear(d, classes, rngs=rngs)

    def spectral_layers(self):
        return [l for b in self.blocks for l in (b.l1, b.l2)]

    def features(self, x, train: bool = False):
        for b in self.blocks:
            x = b(x, train)
        return x

    def __call__(self, x, train: bool = False):
        return self.head(self.features(x, train))


def true_norms(model) -> list[float]:
    """Each spectral layer's true ``||W||_2``: a dense float64 SVD (numpy) of the weight in use."""
    return [float(np.linalg.norm(np.asarray(l.effective_weight(), np.float64), 2))
            for l in model.spectral_layers()]


@functools.partial(nnx.jit, static_argnames="temperature")
def _step(model, opt, x, y, temperature):
    def loss_fn(model):
        logits = temperature * model(x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss


def _train(model, X, y, args, bar, temperature: float):
    opt = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    rng = np.random.default_rng(args.seed)
    return train_loop(lambda idx: (X[idx], y[idx]),
                      lambda xb, yb: _step(model, opt, xb, yb, temperature).block_until_ready(),
                      X.shape[0], args, bar, lambda: rng.permutation(X.shape[0]),
                      lambda: (true_norms(model), [l.claimed_norm() for l in model.spectral_layers()]),
                      skip_first=True)  # the first step compiles


def run_classifier(method, data, args, bar):
    Xtr, ytr, Xte, yte = data
    dims = [Xtr.shape[1], args.width, args.width, args.width, 10]
    model = MLP(method, dims, rngs=nnx.Rngs(args.seed))
    ms, hist = _train(model, Xtr, ytr, args, bar, temperature=16.0)
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, Xte), np.float64)
    return classifier_result(logits, yte, true_norms(model),
                             [l.claimed_norm() for l in model.spectral_layers()], ms, hist), dims, model


@nnx.jit
def _fixed_point_step(block, x, y):
    return y - block.g(x)


def _invert(block, y, tol: float = 1e-5, max_iter: int = 200):
    scale = np.maximum(np.linalg.norm(np.asarray(y), axis=-1), 1e-12)
    return fixed_point(lambda x: _fixed_point_step(block, x, y), y,
                       lambda a, b: float(np.max(np.linalg.norm(np.asarray(a - b), axis=-1) / scale)),
                       tol, max_iter)


def run_iresnet(method, data, args, bar):
    Xtr, ytr, Xte, yte = data
    d, hidden = Xtr.shape[1], 128
    model = IResNet(method, d, hidden, args.blocks, 10, BOUND_IRESNET, rngs=nnx.Rngs(args.seed))
    ms, hist = _train(model, Xtr, ytr, args, bar, temperature=1.0)
    acc = float(np.mean(np.asarray(nnx.jit(lambda m, x: m(x))(model, Xte)).argmax(-1) == yte))
    z = nnx.jit(lambda m, x: m.features(x))(model, Xte)
    iters, ok = [], True
    for b in reversed(list(model.blocks)):
        z, it, conv = _invert(b, z)
        iters.append(it)
        ok &= conv
    iters.reverse()
    X = np.asarray(Xte)
    err = float(np.max(np.linalg.norm(np.asarray(z) - X, axis=-1) / np.maximum(np.linalg.norm(X, axis=-1), 1e-12)))
    weights = [np.asarray(l.effective_weight(), np.float64) for l in model.spectral_layers()]
    res, arch = iresnet_result(acc, true_norms(model), iters, err, ok, ms, hist, args.blocks, d, hidden,
                               flatness(weights))
    return res, arch, model


def timing_step(method: str, d: int, n: int, seed: int):
    """One (jitted, waited-for) Adam step of a 3-layer d x d spectral MLP on a random batch."""
    model = MLP(method, [d, d, d, d], rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    X = jax.random.normal(jax.random.key(seed), (n, d))

    @nnx.jit
    def step(model, opt, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x, train=True) ** 2))(model)
        opt.update(model, grads)
        return loss

    return lambda: step(model, opt, X).block_until_ready()


def run(args, data, save=lambda part, row: None) -> dict:
    dev = jax.devices(args.device)[0] if args.device != "cpu" else jax.devices("cpu")[0]
    Xtr, ytr, Xte, yte = data
    with jax.default_device(dev):
        data = (jnp.asarray(Xtr), jnp.asarray(ytr), jnp.asarray(Xte), np.asarray(yte))
        return collect("jax", str(dev), data, args, run_classifier, run_iresnet,
                       lambda m, d, n: timing_step(m, d, n, args.seed), save)
