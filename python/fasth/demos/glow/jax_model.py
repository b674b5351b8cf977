"""Glow in JAX with Flax NNX (the layer library ``fasth.jax`` builds on), images NHWC: the
same architecture and training as the torch model (``torch_model.py``). As there, each level
builds the 1x1-conv matrices of its ``K`` steps at once (``weights(convs)`` /
``inverse_weights(convs)`` per variant): for ``svd`` one batched ``fasth.jax.matrix`` gives
every ``U`` and ``V`` of the level; its log-determinant and inverse come from the singular
values.

``model = Glow(cfg, seed=...)``, ``model.initialize(x)`` (data-dependent actnorm, eager), then
``model.encode(x)`` gives ``(zs, logdet, logpz)``, ``model.decode(zs)`` inverts it and
``model.decode(key=k, n=n, temperature=t)`` samples."""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .torch_model import CONVS

LOG2PI = math.log(2 * math.pi)


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
            self.logs[...] = -jnp.log(x.std((0, 1, 2)) + 1e-6)
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
        import scipy.linalg

        P, L, U = scipy.linalg.lu(W0)
        s = np.diag(U)
        self.P = nnx.Variable(_f32(P))
        self.sign_s = nnx.Variable(_f32(np.sign(s)))
        self.L = nnx.Param(_f32(np.tril(L, -1)))
        self.U = nnx.Param(_f32(np.triu(U, 1)))
        self.log_s = nnx.Param(_f32(np.log(np.abs(s))))

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
        import torch

        from fasth.torch import householder_vectors

        c = W0.shape[0]
        u, s, vh = np.linalg.svd(W0)
        if np.allclose(s, s[0], rtol=1e-6, atol=0):  # as torch_model.SVDConv: avoid V = I
            R = _random_orthogonal(c, np.random.default_rng(c))
            u, v = u @ R, vh.T @ R
        else:
            v = vh.T
        hv = lambda a: householder_vectors(torch.as_tensor(a)).numpy()  # noqa: E731
        self.UV = nnx.Param(_f32(np.stack([hv(u), hv(v)])))
        self.log_s = nnx.Param(_f32(np.log(s)))

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


def _random_orthogonal(c: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    return q * np.sign(np.diag(r))


class ZeroConv(nnx.Module):
    """3x3 convolution initialised to zero, output scaled by ``e^{3 logs}``."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        zeros = nnx.initializers.zeros
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", kernel_init=zeros, bias_init=zeros,
                             rngs=rngs)
        self.logs = nnx.Param(jnp.zeros(cout))

    def __call__(self, x):
        return self.conv(x) * jnp.exp(3 * self.logs[...])


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
        return h[..., 0::2], h[..., 1::2] + 2.0

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
        c, h, w = shape
        if h % (2 ** levels) or w % (2 ** levels):
            raise ValueError(f"Glow: image {h}x{w} must be divisible by 2^levels = {2 ** levels}")
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
            levels.append(nnx.List([FlowStep(c, cfg.width, cfg.conv, _random_orthogonal(c, rng), rngs)
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


def bits_per_dim(logpx, dims, levels):
    return (-logpx + dims * math.log(levels)) / (dims * math.log(2))


def to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


# training ---------------------------------------------------------------------------------

def make_optimizer(lr, warmup, clip):
    import optax

    sched = optax.linear_schedule(lr / warmup, lr, warmup)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(sched))


def make_train_step(cfg, levels):
    @nnx.jit
    def step(model, opt, x_int, key):
        x = preprocess(key, x_int, levels)
        loss, grads = nnx.value_and_grad(lambda m: bits_per_dim(m.log_prob(x), cfg.dims, levels).mean())(model)
        opt.update(model, grads)
        return loss

    return step


def _pure(tree) -> dict:
    """A model's or optimiser's state as nested dicts of numpy arrays (for pickling)."""
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(tree)))


def _load(tree, pure: dict) -> None:
    state = nnx.state(tree)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    nnx.update(tree, state)


def train_jax(args, data) -> int:
    from tqdm import tqdm

    from .train import NonFiniteLoss, batches, save_png

    cfg = Config(data.shape, args.levels, args.steps, args.width, args.conv)
    x_train, x_test = to_nhwc(data.train), to_nhwc(data.test)
    out = Path(args.out)
    ckpt_path = out / f"glow-jax-{args.conv}.pkl"
    model = Glow(cfg, args.seed)
    opt = nnx.Optimizer(model, make_optimizer(args.lr, args.warmup, args.clip), wrt=nnx.Param)
    if args.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        with open(ckpt_path, "rb") as f:
            ck = pickle.load(f)
        for k in ("levels", "steps", "width", "conv", "data"):
            if ck["args"][k] != getattr(args, k):
                raise ValueError(f"--resume: checkpoint {ckpt_path} has {k}={ck['args'][k]!r}, "
                                 f"not {getattr(args, k)!r}")
        _load(model, ck["model"])
        _load(opt, ck["opt"])
        start_epoch, step_no = ck["epoch"], ck["step"]
        print(f"resumed from {ckpt_path} at epoch {start_epoch}")
    else:
        idx = next(batches(len(x_train), args.batch_size, 0, args.seed))
        model.initialize(preprocess(jax.random.PRNGKey(args.seed), jnp.asarray(x_train[idx]), data.levels))
        start_epoch, step_no = 0, 0
    train_step = make_train_step(cfg, data.levels)
    eval_lp = nnx.jit(lambda m, x: m.log_prob(x))

    def test_bpd():
        k = jax.random.PRNGKey(12345)
        tot = 0.0
        for i in range(0, len(x_test), 256):
            k, kk = jax.random.split(k)
            x = preprocess(kk, jnp.asarray(x_test[i:i + 256]), data.levels)
            tot += float(bits_per_dim(eval_lp(model, x), cfg.dims, data.levels).sum())
        return tot / len(x_test)

    t0 = time.perf_counter()
    train_bpd = float("nan")
    for epoch in range(start_epoch, args.epochs):
        its = list(batches(len(x_train), args.batch_size, epoch, args.seed))
        bar = tqdm(its, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.quiet, leave=False,
                   dynamic_ncols=True)
        tot, cnt = 0.0, 0
        for i, idx in enumerate(bar):
            k = jax.random.fold_in(jax.random.PRNGKey(args.seed), step_no)
            xb = jnp.asarray(x_train[idx])
            before = nnx.to_pure_dict(nnx.state(model))  # immutable arrays: a cheap snapshot
            loss = float(train_step(model, opt, xb, k))
            if not math.isfinite(loss):
                where = f"epoch {epoch + 1}, step {i + 1} (global step {step_no + 1})"
                _load(model, before)  # the parameters that gave the non-finite loss
                found: list[str] = []
                model.encode(preprocess(k, xb, data.levels), check=found)
                raise NonFiniteLoss(f"non-finite loss {loss} at {where}; " + (
                    f"first non-finite output in {found[0]}" if found else
                    "every layer output is finite (the non-finite value is in the prior, the sum or the gradient)"))
            step_no += 1
            tot += loss
            cnt += 1
            bar.set_postfix(bpd=f"{tot / cnt:.3f}")
        train_bpd = tot / max(cnt, 1)
        tb = test_bpd()
        print(f"epoch {epoch + 1}/{args.epochs}: train {train_bpd:.4f} bits/dim, test {tb:.4f} bits/dim, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(ckpt_path, "wb") as f:
            pickle.dump({"model": _pure(model), "opt": _pure(opt), "epoch": epoch + 1,
                         "step": step_no, "args": vars(args)}, f)
    tb = test_bpd()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    post = lambda x: np.clip(np.floor((np.asarray(x) + 0.5) * data.levels), 0, data.levels - 1)  # noqa: E731
    samples = post(model.decode(key=k1, n=64, temperature=0.7)) / (data.levels - 1)
    orig = jnp.asarray(x_test[:32])
    zs, _, _ = model.encode(preprocess(k2, orig, data.levels))
    recons = post(model.decode(zs)) / (data.levels - 1)
    nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"glow-jax-{args.conv}.png"
    save_png(png, nchw(samples), nchw(orig) / (data.levels - 1), nchw(recons),
             f"JAX Glow, {args.conv} 1x1 conv, {data.name}: test {tb:.3f} bits/dim")
    print(f"final: train {train_bpd:.4f} bits/dim, test {tb:.4f} bits/dim "
          f"(uniform {math.log2(data.levels):.4f}); {time.perf_counter() - t0:.1f} s; "
          f"wrote {png} and {ckpt_path}")
    args.result = {"train_bpd": train_bpd, "test_bpd": tb}
    return 0
