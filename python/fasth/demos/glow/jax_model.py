"""Glow in JAX with Flax NNX (the layer library ``fasth.jax`` builds on), images NHWC: the
same architecture as the torch model (``torch_model.py``), and its ``Trainer`` for the driver
(``train.py``). As there, each level builds the 1x1-conv matrices of its ``K`` steps at once
(``weights(convs)`` / ``inverse_weights(convs)`` per variant): for ``svd`` one batched
``fasth.jax.matrix`` gives every ``U`` and ``V`` of the level; its log-determinant and inverse
come from the singular values. Imports no torch.

``model = Glow(cfg, seed=...)``, ``model.initialize(x)`` (data-dependent actnorm, eager), then
``model.encode(x)`` gives ``(zs, logdet, logpz)``, ``model.decode(zs)`` inverts it and
``model.decode(key=k, n=n, temperature=t)`` samples."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .flow import (ACTNORM_EPS, CONVS, COUPLING_SHIFT, LOG2PI, ZERO_CONV_LOGSCALE, bits_per_dim,
                   check_shape, lu_parameters, random_orthogonal, svd_parameters)


# layers -----------------------------------------------------------------------------------

def squeeze(x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x):
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, 2 * h, 2 * w, c // 4)


def gaussian_logp(x, mean, logs):
    lp = -0.5 * (LOG2PI + 2 * logs + (x - mean) ** 2 * jnp.exp(-2 * logs))
    return lp.reshape(x.shape[0], -1).sum(1)


def _f32(a):
    return jnp.asarray(a, jnp.float32)


class ActNorm(nnx.Module):
    """Per-channel ``y = (x + b) e^{logs}``, initialised from the first batch (eagerly, by
    ``Glow.initialize``) to zero mean and unit variance."""

    def __init__(self, c: int):
        self.b = nnx.Param(jnp.zeros(c))
        self.logs = nnx.Param(jnp.zeros(c))

    def __call__(self, x, logdet, init: bool = False):
        if init:
            self.b[...] = -x.mean((0, 1, 2))
            self.logs[...] = -jnp.log(x.std((0, 1, 2)) + ACTNORM_EPS)
        hw = x.shape[1] * x.shape[2]
        return (x + self.b[...]) * jnp.exp(self.logs[...]), logdet + hw * self.logs[...].sum()

    def inverse(self, y):
        return y * jnp.exp(-self.logs[...]) - self.b[...]


def _stack(convs, name):
    return jnp.stack([getattr(c, name)[...] for c in convs])


class InvConv(nnx.Module):
    """A 1x1 convolution's matrix. ``weights(convs)`` gives ``W`` (``(K, c, c)``) and
    ``log|det W|`` (``(K,)``) of a list of convolutions of one variant, ``inverse_weights``
    their ``W^{-1}``; one convolution is the case ``K = 1``."""

    def weight(self):
        """``(W, log|det W|)``."""
        W, lad = self.weights([self])
        return W[0], lad[0]

    def inverse_weight(self):
        return self.inverse_weights([self])[0]


class PlainConv(InvConv):
    def __init__(self, W0: np.ndarray):
        self.W = nnx.Param(_f32(W0))

    @staticmethod
    def weights(convs):
        W = _stack(convs, "W")
        return W, jnp.linalg.slogdet(W)[1]

    @staticmethod
    def inverse_weights(convs):
        return jnp.linalg.inv(_stack(convs, "W"))


class LUConv(InvConv):
    """``W = P L (U + diag(sign(s) e^{log|s|}))``; ``P`` and ``sign(s)`` are fixed (plain
    ``nnx.Variable``, so the optimiser leaves them alone)."""

    def __init__(self, W0: np.ndarray):
        p = lu_parameters(W0)
        self.P = nnx.Variable(_f32(p["P"]))
        self.sign_s = nnx.Variable(_f32(p["sign_s"]))
        self.L = nnx.Param(_f32(p["L"]))
        self.U = nnx.Param(_f32(p["U"]))
        self.log_s = nnx.Param(_f32(p["log_s"]))

    @staticmethod
    def _factors(convs):
        c = convs[0].L.shape[0]
        L = jnp.tril(_stack(convs, "L"), -1) + jnp.eye(c)
        s = _stack(convs, "sign_s") * jnp.exp(_stack(convs, "log_s"))
        U = jnp.triu(_stack(convs, "U"), 1) + s[:, :, None] * jnp.eye(c)
        return _stack(convs, "P"), L, U

    @staticmethod
    def weights(convs):
        P, L, U = LUConv._factors(convs)
        return P @ (L @ U), _stack(convs, "log_s").sum(-1)

    @staticmethod
    def inverse_weights(convs):
        P, L, U = LUConv._factors(convs)
        Linv_Pt = jax.scipy.linalg.solve_triangular(L, jnp.swapaxes(P, -1, -2), lower=True,
                                                    unit_diagonal=True)
        return jax.scipy.linalg.solve_triangular(U, Linv_Pt, lower=False)


class SVDConv(InvConv):
    """``W = U diag(e^{log s}) V^T`` with the Householder vectors of ``U`` and ``V`` in one
    ``(2, c, c)`` parameter; a level's frames come from a single ``fasth.jax.matrix``."""

    def __init__(self, W0: np.ndarray):
        UV, log_s = svd_parameters(W0)
        self.UV = nnx.Param(_f32(UV))
        self.log_s = nnx.Param(_f32(log_s))

    @staticmethod
    def _frames(convs):
        import fasth.jax as fj

        UV = fj.matrix(_stack(convs, "UV"))  # (K, 2, c, c): one call for all frames
        return UV[:, 0], UV[:, 1], _stack(convs, "log_s")

    @staticmethod
    def weights(convs):
        U, V, log_s = SVDConv._frames(convs)
        return (U * jnp.exp(log_s)[:, None, :]) @ jnp.swapaxes(V, -1, -2), log_s.sum(-1)

    @staticmethod
    def inverse_weights(convs):
        U, V, log_s = SVDConv._frames(convs)
        return (V * jnp.exp(-log_s)[:, None, :]) @ jnp.swapaxes(U, -1, -2)


def make_conv(kind: str, W0: np.ndarray) -> nnx.Module:
    """A ``kind`` 1x1 convolution whose ``W`` is ``W0``."""
    convs = {"plain": PlainConv, "lu": LUConv, "svd": SVDConv}
    if kind not in convs:
        raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")
    return convs[kind](np.asarray(W0, np.float64))


class ZeroConv(nnx.Module):
    """3x3 convolution initialised to zero, output scaled by ``e^{3 logs}``."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        zeros = nnx.initializers.zeros
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", kernel_init=zeros, bias_init=zeros,
                             rngs=rngs)
        self.logs = nnx.Param(jnp.zeros(cout))

    def __call__(self, x):
        return self.conv(x) * jnp.exp(ZERO_CONV_LOGSCALE * self.logs[...])


class Coupling(nnx.Module):
    """Affine coupling: ``y_b = (x_b + t(x_a)) * sigmoid(h(x_a) + 2)``, ``y_a = x_a``."""

    def __init__(self, c: int, width: int, rngs: nnx.Rngs):
        ca = c // 2
        init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # torch's default
        self.conv1 = nnx.Conv(ca, width, (3, 3), padding="SAME", kernel_init=init, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (1, 1), kernel_init=init, rngs=rngs)
        self.out = ZeroConv(width, 2 * (c - ca), rngs)

    def _st(self, xa):
        h = self.out(jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(xa)))))
        return h[..., 0::2], h[..., 1::2] + COUPLING_SHIFT

    def __call__(self, x, logdet):
        ca = x.shape[-1] // 2
        xa, xb = x[..., :ca], x[..., ca:]
        shift, raw = self._st(xa)
        yb = (xb + shift) * jax.nn.sigmoid(raw)
        return (jnp.concatenate([xa, yb], -1),
                logdet + jax.nn.log_sigmoid(raw).reshape(x.shape[0], -1).sum(1))

    def inverse(self, y):
        ca = y.shape[-1] // 2
        ya, yb = y[..., :ca], y[..., ca:]
        shift, raw = self._st(ya)
        return jnp.concatenate([ya, yb / jax.nn.sigmoid(raw) - shift], -1)


class FlowStep(nnx.Module):
    def __init__(self, c: int, width: int, kind: str, W0: np.ndarray, rngs: nnx.Rngs):
        self.actnorm = ActNorm(c)
        self.conv = make_conv(kind, W0)
        self.coupling = Coupling(c, width, rngs)

    def __call__(self, x, logdet, init: bool = False, check=None, where: str = "", weight=None):
        """``check``: an empty list (eager calls only) that receives ``where`` + the name of
        the first layer whose output is not finite. ``weight``: the 1x1 conv's ``(W,
        log|det W|)`` when the level built it."""
        x, logdet = self.actnorm(x, logdet, init)
        _check(check, where + "actnorm", x)
        W, lad = self.conv.weight() if weight is None else weight
        x = jnp.einsum("bhwc,dc->bhwd", x, W)
        logdet = logdet + x.shape[1] * x.shape[2] * lad
        _check(check, where + "conv", x)
        x, logdet = self.coupling(x, logdet)
        _check(check, where + "coupling", x)
        return x, logdet

    def inverse(self, y, inverse_weight=None):
        Winv = self.conv.inverse_weight() if inverse_weight is None else inverse_weight
        y = jnp.einsum("bhwc,dc->bhwd", self.coupling.inverse(y), Winv)
        return self.actnorm.inverse(y)


def conv_weights(convs):
    """``(W, log|det W|)`` of a list of one variant's 1x1 convolutions (a level's), in one
    batched call."""
    return type(convs[0]).weights(convs)


def conv_inverse_weights(convs):
    return type(convs[0]).inverse_weights(convs)


def _check(check, name, x):
    if check is not None and not check and not bool(jnp.isfinite(x).all()):
        check.append(name)


# model ------------------------------------------------------------------------------------

class Config:
    def __init__(self, shape, levels, steps, width, conv):
        check_shape(shape, levels)
        self.shape, self.levels, self.steps, self.width, self.conv = shape, levels, steps, width, conv

    @property
    def dims(self):
        return int(np.prod(self.shape))


class Glow(nnx.Module):
    """Multi-scale Glow on NHWC images. The initial 1x1 convolutions are random orthogonal
    from ``seed`` (the same for every variant)."""

    def __init__(self, cfg: Config, seed: int = 0):
        self.cfg = cfg
        rngs = nnx.Rngs(seed)
        rng = np.random.default_rng(seed)
        c = cfg.shape[0]
        levels, priors = [], []
        for i in range(cfg.levels):
            c = 4 * c
            levels.append(nnx.List([FlowStep(c, cfg.width, cfg.conv, random_orthogonal(c, rng), rngs)
                                    for _ in range(cfg.steps)]))
            if i < cfg.levels - 1:
                priors.append(ZeroConv(c // 2, c, rngs))
                c = c // 2
        self.levels, self.priors = nnx.List(levels), nnx.List(priors)
        h = cfg.shape[1] >> cfg.levels
        self.top = nnx.Param(jnp.zeros((h, h * cfg.shape[2] // cfg.shape[1], 2 * c)))

    def initialize(self, x) -> None:
        """Data-dependent initialisation of every actnorm from the batch ``x`` (eager)."""
        self.encode(x, init=True)

    def encode(self, x, init: bool = False, check=None):
        """``(zs, logdet, logpz)`` per sample for NHWC ``x``."""
        n = x.shape[0]
        logdet, logpz, zs = jnp.zeros(n), jnp.zeros(n), []
        for i, steps in enumerate(self.levels):
            x = squeeze(x)
            W, lad = conv_weights([step.conv for step in steps])
            for k, step in enumerate(steps):
                x, logdet = step(x, logdet, init, check, f"level {i} step {k} ", (W[k], lad[k]))
            if i < self.cfg.levels - 1:
                ca = x.shape[-1] // 2
                x, z = x[..., :ca], x[..., ca:]
                h = self.priors[i](x)
                logpz = logpz + gaussian_logp(z, h[..., 0::2], h[..., 1::2])
                zs.append(z)
        top = self.top[...]
        c = top.shape[-1] // 2
        zs.append(x)
        return zs, logdet, logpz + gaussian_logp(x, top[..., :c], top[..., c:])

    def log_prob(self, x):
        _, logdet, logpz = self.encode(x)
        return logpz + logdet

    def decode(self, zs=None, *, key=None, n=None, temperature=1.0):
        """``x`` from latents ``zs``; with ``zs=None`` draws ``n`` samples at ``temperature``."""
        def draw(k, mean, logs):
            return mean + jnp.exp(logs) * temperature * jax.random.normal(k, mean.shape)

        top = self.top[...]
        c = top.shape[-1] // 2
        if zs is None:
            key, k = jax.random.split(key)
            t = jnp.broadcast_to(top, (n,) + top.shape)
            x = draw(k, t[..., :c], t[..., c:])
        else:
            x = zs[-1]
        for i in reversed(range(self.cfg.levels)):
            if i < self.cfg.levels - 1:
                h = self.priors[i](x)
                if zs is None:
                    key, k = jax.random.split(key)
                    z = draw(k, h[..., 0::2], h[..., 1::2])
                else:
                    z = zs[i]
                x = jnp.concatenate([x, z], -1)
            Winv = conv_inverse_weights([step.conv for step in self.levels[i]])
            for k in reversed(range(len(self.levels[i]))):
                x = self.levels[i][k].inverse(x, Winv[k])
            x = unsqueeze(x)
        return x


def preprocess(key, x_int, levels):
    return (x_int.astype(jnp.float32) + jax.random.uniform(key, x_int.shape)) / levels - 0.5


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# training -----------------------------------------------------------------------------------

def _pure(tree) -> dict:
    """A model's or optimiser's state as nested dicts of numpy arrays (for pickling)."""
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(tree)))


def _load(tree, pure: dict) -> None:
    state = nnx.state(tree)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    nnx.update(tree, state)


class Trainer:
    """The JAX side of the driver (``train.py``): a Glow and its clipped Adam (optax), on the
    JAX backend ``args.device`` (default: JAX's)."""

    title, suffix, rank, world = "JAX", "pkl", 0, 1

    def __init__(self, args, data) -> None:
        self.args, self.data = args, data

    def __enter__(self) -> "Trainer":
        import optax

        args, data = self.args, self.data
        self._device = jax.default_device(jax.devices(args.device)[0] if args.device else None)
        self._device.__enter__()
        self.cfg = Config(data.shape, args.levels, args.steps, args.width, args.conv)
        self.x_train, self.x_test = to_nhwc(data.train), to_nhwc(data.test)
        self.model = Glow(self.cfg, args.seed)
        # The learning rate is a hyperparameter the driver sets at every step (its warm-up).
        tx = optax.chain(optax.clip_by_global_norm(args.clip),
                         optax.inject_hyperparams(optax.adam)(learning_rate=args.lr))
        self.opt = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        cfg, levels = self.cfg, data.levels

        @nnx.jit
        def train_step(model, opt, x_int, key, lr):
            opt.opt_state[1].hyperparams["learning_rate"][...] = lr
            x = preprocess(key, x_int, levels)
            loss, grads = nnx.value_and_grad(lambda m: bits_per_dim(m.log_prob(x), cfg.dims, levels).mean())(model)
            opt.update(model, grads)
            return loss

        self._step = train_step
        self._log_prob = nnx.jit(lambda m, x: m.log_prob(x))
        self.last = None
        return self

    def __exit__(self, *exc) -> None:
        self._device.__exit__(*exc)

    def initialize(self, idx) -> None:
        x = preprocess(jax.random.PRNGKey(self.args.seed), jnp.asarray(self.x_train[idx]), self.data.levels)
        self.model.initialize(x)

    def step(self, idx, step: int, lr: float) -> float:
        """One optimiser step; after a non-finite loss the parameters are put back as they were."""
        key = jax.random.fold_in(jax.random.PRNGKey(self.args.seed), step)
        xb = jnp.asarray(self.x_train[idx])
        before = nnx.to_pure_dict(nnx.state(self.model))  # immutable arrays: a cheap snapshot
        loss = float(self._step(self.model, self.opt, xb, key, lr))
        if not np.isfinite(loss):
            _load(self.model, before)  # the parameters that gave the non-finite loss
            self.last = preprocess(key, xb, self.data.levels)
        return loss

    def locate_nonfinite(self) -> str:
        found: list[str] = []
        self.model.encode(self.last, check=found)
        return f"first non-finite output in {found[0]}" if found else \
            "every layer output is finite (the non-finite value is in the prior, the sum or the gradient)"

    def test_bpd(self, batch: int, seed: int) -> float:
        k = jax.random.PRNGKey(seed)
        tot = 0.0
        for i in range(0, len(self.x_test), batch):
            k, kk = jax.random.split(k)
            x = preprocess(kk, jnp.asarray(self.x_test[i:i + batch]), self.data.levels)
            tot += float(bits_per_dim(self._log_prob(self.model, x), self.cfg.dims, self.data.levels).sum())
        return tot / len(self.x_test)

    def pictures(self, n: int, temperature: float, originals: np.ndarray, seed: int):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        samples = self.model.decode(key=k1, n=n, temperature=temperature)
        zs, _, _ = self.model.encode(preprocess(k2, jnp.asarray(to_nhwc(originals)), self.data.levels))
        nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
        return nchw(samples), nchw(self.model.decode(zs))

    def save(self, path, meta: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump({"model": _pure(self.model), "opt": _pure(self.opt), **meta}, f)

    def read(self, path) -> dict:
        with open(path, "rb") as f:
            return pickle.load(f)

    def restore(self, ck: dict) -> None:
        _load(self.model, ck["model"])
        _load(self.opt, ck["opt"])
