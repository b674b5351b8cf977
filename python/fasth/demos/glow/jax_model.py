"""Glow in JAX (pure functions over a parameter tree, optax for Adam), images NHWC. The same
architecture and training as the torch model (``torch_model.py``); the ``svd`` 1x1
convolution materialises ``U`` and ``V`` with ``fasth.jax.matrix``.

``params = init(key, shape, x, ...)`` builds the tree with the data-dependent actnorm
initialisation from the batch ``x``; ``encode(params, x)`` gives ``(zs, logdet, logpz)``,
``decode(params, zs)`` inverts it, ``sample(params, key, n, temperature)`` draws."""

from __future__ import annotations

import math
import pickle
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

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


def conv(x, w, b):
    """``w`` HWIO, SAME padding."""
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def zero_conv(p, x):
    return conv(x, p["w"], p["b"]) * jnp.exp(3 * p["logs"])


def actnorm(p, x, logdet, init: bool):
    if init:  # data-dependent, outside jit: write the parameters from this batch
        p["b"] = -x.mean((0, 1, 2))
        p["logs"] = -jnp.log(x.std((0, 1, 2)) + 1e-6)
    hw = x.shape[1] * x.shape[2]
    return (x + p["b"]) * jnp.exp(p["logs"]), logdet + hw * p["logs"].sum()


def actnorm_inverse(p, y):
    return y * jnp.exp(-p["logs"]) - p["b"]


def conv_weight(kind: str, p):
    """``(W, log|det W|)`` of a 1x1 convolution."""
    if kind == "plain":
        return p["W"], jnp.linalg.slogdet(p["W"])[1]
    if kind == "lu":
        L, U = _lu_factors(p)
        return p["P"] @ (L @ U), p["log_s"].sum()
    U, V = _svd_frames(p)
    return (U * jnp.exp(p["log_s"])) @ V.T, p["log_s"].sum()


def conv_inverse_weight(kind: str, p):
    if kind == "plain":
        return jnp.linalg.inv(p["W"])
    if kind == "lu":
        L, U = _lu_factors(p)
        Linv_Pt = jax.scipy.linalg.solve_triangular(L, p["P"].T, lower=True, unit_diagonal=True)
        return jax.scipy.linalg.solve_triangular(U, Linv_Pt, lower=False)
    U, V = _svd_frames(p)
    return (V * jnp.exp(-p["log_s"])) @ U.T


def _lu_factors(p):
    c = p["L"].shape[0]
    L = jnp.tril(p["L"], -1) + jnp.eye(c)
    U = jnp.triu(p["U"], 1) + jnp.diag(p["sign_s"] * jnp.exp(p["log_s"]))
    return L, U


def _svd_frames(p):
    import fasth.jax as fj

    return fj.matrix(p["U"]), fj.matrix(p["V"])


def conv_params(kind: str, W0: np.ndarray) -> dict:
    """Parameters of a ``kind`` 1x1 convolution whose ``W`` is ``W0``. Fixed parts (``P``,
    ``sign_s``) are kept in the tree and get zero gradients (they are masked in the update)."""
    import scipy.linalg

    c = W0.shape[0]
    f = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    if kind == "plain":
        return {"W": f(W0)}
    if kind == "lu":
        P, L, U = scipy.linalg.lu(W0)
        s = np.diag(U)
        return {"P": f(P), "sign_s": f(np.sign(s)), "L": f(np.tril(L, -1)), "U": f(np.triu(U, 1)),
                "log_s": f(np.log(np.abs(s)))}
    if kind == "svd":
        import torch

        from fasth.torch import householder_vectors

        u, s, vh = np.linalg.svd(W0)
        if np.allclose(s, s[0], rtol=1e-6, atol=0):  # as torch_model.SVDConv: avoid V = I
            R = _random_orthogonal(c, np.random.default_rng(c))
            u, v = u @ R, vh.T @ R
        else:
            v = vh.T
        hv = lambda a: householder_vectors(torch.as_tensor(a)).numpy()  # noqa: E731
        return {"U": f(hv(u)), "V": f(hv(v)), "log_s": f(np.log(s))}
    raise ValueError(f"conv must be one of {CONVS}, got {kind!r}")


FROZEN = ("P", "sign_s")


def _random_orthogonal(c: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    return q * np.sign(np.diag(r))


def coupling_params(key, c: int, width: int) -> dict:
    ca = c // 2
    k1, k2 = jax.random.split(key)

    def he(k, shape):
        fan_in = shape[0] * shape[1] * shape[2]
        return jax.random.uniform(k, shape, jnp.float32, -1, 1) * math.sqrt(1 / fan_in)

    return {"w1": he(k1, (3, 3, ca, width)), "b1": jnp.zeros(width),
            "w2": he(k2, (1, 1, width, width)), "b2": jnp.zeros(width),
            "out": {"w": jnp.zeros((3, 3, width, 2 * (c - ca))), "b": jnp.zeros(2 * (c - ca)),
                    "logs": jnp.zeros(2 * (c - ca))}}


def _coupling_st(p, xa):
    h = jax.nn.relu(conv(xa, p["w1"], p["b1"]))
    h = jax.nn.relu(conv(h, p["w2"], p["b2"]))
    h = zero_conv(p["out"], h)
    return h[..., 0::2], h[..., 1::2] + 2.0


def coupling(p, x, logdet):
    ca = x.shape[-1] // 2
    xa, xb = x[..., :ca], x[..., ca:]
    shift, raw = _coupling_st(p, xa)
    yb = (xb + shift) * jax.nn.sigmoid(raw)
    return jnp.concatenate([xa, yb], -1), logdet + jax.nn.log_sigmoid(raw).reshape(x.shape[0], -1).sum(1)


def coupling_inverse(p, y):
    ca = y.shape[-1] // 2
    ya, yb = y[..., :ca], y[..., ca:]
    shift, raw = _coupling_st(p, ya)
    return jnp.concatenate([ya, yb / jax.nn.sigmoid(raw) - shift], -1)


def step_forward(kind, p, x, logdet, init=False, check=None):
    x, logdet = actnorm(p["actnorm"], x, logdet, init)
    _check(check, "actnorm", x)
    W, lad = conv_weight(kind, p["conv"])
    x = jnp.einsum("bhwc,dc->bhwd", x, W)
    logdet = logdet + x.shape[1] * x.shape[2] * lad
    _check(check, "conv", x)
    x, logdet = coupling(p["coupling"], x, logdet)
    _check(check, "coupling", x)
    return x, logdet


def step_inverse(kind, p, y):
    y = coupling_inverse(p["coupling"], y)
    y = jnp.einsum("bhwc,dc->bhwd", y, conv_inverse_weight(kind, p["conv"]))
    return actnorm_inverse(p["actnorm"], y)


def _check(check, name, x):
    if check is not None and not check and not bool(jnp.isfinite(x).all()):
        check.append(f"{check_prefix[0]}{name}")


check_prefix = [""]


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


def init(key, cfg: Config, x, seed: int = 0) -> dict:
    """Parameters, with every actnorm initialised from the batch ``x`` (NHWC, dequantised).
    The initial 1x1 convolutions are random orthogonal from ``seed`` (same for every variant)."""
    rng = np.random.default_rng(seed)
    c = cfg.shape[0]
    params = {"levels": [], "priors": []}
    for i in range(cfg.levels):
        c = 4 * c
        steps = []
        for _ in range(cfg.steps):
            key, k = jax.random.split(key)
            steps.append({"actnorm": {"b": jnp.zeros(c), "logs": jnp.zeros(c)},
                          "conv": conv_params(cfg.conv, _random_orthogonal(c, rng)),
                          "coupling": coupling_params(k, c, cfg.width)})
        params["levels"].append(steps)
        if i < cfg.levels - 1:
            params["priors"].append({"w": jnp.zeros((3, 3, c // 2, c)), "b": jnp.zeros(c),
                                     "logs": jnp.zeros(c)})
            c = c // 2
    h = cfg.shape[1] >> cfg.levels
    params["top"] = jnp.zeros((h, h * cfg.shape[2] // cfg.shape[1], 2 * c))
    encode(cfg, params, x, init=True)
    return params


def encode(cfg: Config, params, x, init=False, check=None):
    """``(zs, logdet, logpz)`` per sample for NHWC ``x``."""
    n = x.shape[0]
    logdet = jnp.zeros(n)
    logpz = jnp.zeros(n)
    zs = []
    for i in range(cfg.levels):
        x = squeeze(x)
        for k, p in enumerate(params["levels"][i]):
            check_prefix[0] = f"level {i} step {k} "
            x, logdet = step_forward(cfg.conv, p, x, logdet, init, check)
        if i < cfg.levels - 1:
            ca = x.shape[-1] // 2
            x, z = x[..., :ca], x[..., ca:]
            h = zero_conv(params["priors"][i], x)
            logpz = logpz + gaussian_logp(z, h[..., 0::2], h[..., 1::2])
            zs.append(z)
    top = params["top"]
    c = top.shape[-1] // 2
    zs.append(x)
    return zs, logdet, logpz + gaussian_logp(x, top[..., :c], top[..., c:])


def log_prob(cfg, params, x):
    _, logdet, logpz = encode(cfg, params, x)
    return logpz + logdet


def decode(cfg: Config, params, zs=None, *, key=None, n=None, temperature=1.0):
    def draw(k, mean, logs):
        return mean + jnp.exp(logs) * temperature * jax.random.normal(k, mean.shape)

    top = params["top"]
    c = top.shape[-1] // 2
    if zs is None:
        key, k = jax.random.split(key)
        t = jnp.broadcast_to(top, (n,) + top.shape)
        x = draw(k, t[..., :c], t[..., c:])
    else:
        x = zs[-1]
    for i in reversed(range(cfg.levels)):
        if i < cfg.levels - 1:
            h = zero_conv(params["priors"][i], x)
            if zs is None:
                key, k = jax.random.split(key)
                z = draw(k, h[..., 0::2], h[..., 1::2])
            else:
                z = zs[i]
            x = jnp.concatenate([x, z], -1)
        for p in reversed(params["levels"][i]):
            x = step_inverse(cfg.conv, p, x)
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


def _mask_frozen(grads):
    def fix(path, g):
        return jnp.zeros_like(g) if getattr(path[-1], "key", None) in FROZEN else g
    return jax.tree_util.tree_map_with_path(fix, grads)


def make_train_step(cfg, opt, levels):
    import optax

    def loss_fn(params, x):
        return bits_per_dim(log_prob(cfg, params, x), cfg.dims, levels).mean()

    @jax.jit
    def step(params, opt_state, x_int, key):
        x = preprocess(key, x_int, levels)
        loss, grads = jax.value_and_grad(loss_fn)(params, x)
        updates, opt_state = opt.update(_mask_frozen(grads), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train_jax(args, data) -> int:
    from tqdm import tqdm

    from .train import NonFiniteLoss, batches, save_png

    cfg = Config(data.shape, args.levels, args.steps, args.width, args.conv)
    x_train, x_test = to_nhwc(data.train), to_nhwc(data.test)
    out = Path(args.out)
    ckpt_path = out / f"glow-jax-{args.conv}.pkl"
    opt = make_optimizer(args.lr, args.warmup, args.clip)
    key = jax.random.PRNGKey(args.seed)
    if args.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        with open(ckpt_path, "rb") as f:
            ck = pickle.load(f)
        for k in ("levels", "steps", "width", "conv", "data"):
            if ck["args"][k] != getattr(args, k):
                raise ValueError(f"--resume: checkpoint {ckpt_path} has {k}={ck['args'][k]!r}, "
                                 f"not {getattr(args, k)!r}")
        params, opt_state = jax.tree.map(jnp.asarray, (ck["params"], ck["opt_state"]))
        start_epoch, step_no = ck["epoch"], ck["step"]
        print(f"resumed from {ckpt_path} at epoch {start_epoch}")
    else:
        idx = next(batches(len(x_train), args.batch_size, 0, args.seed))
        key, k1, k2 = jax.random.split(key, 3)
        params = init(k1, cfg, preprocess(k2, jnp.asarray(x_train[idx]), data.levels), args.seed)
        opt_state = opt.init(params)
        start_epoch, step_no = 0, 0
    train_step = make_train_step(cfg, opt, data.levels)
    eval_lp = jax.jit(partial(log_prob, cfg))

    def test_bpd(params):
        k = jax.random.PRNGKey(12345)
        tot = 0.0
        for i in range(0, len(x_test), 256):
            k, kk = jax.random.split(k)
            x = preprocess(kk, jnp.asarray(x_test[i:i + 256]), data.levels)
            tot += float(bits_per_dim(eval_lp(params, x), cfg.dims, data.levels).sum())
        return tot / len(x_test)

    t0 = time.perf_counter()
    train_bpd = float("nan")
    for epoch in range(start_epoch, args.epochs):
        its = list(batches(len(x_train), args.batch_size, epoch, args.seed))
        bar = tqdm(its, desc=f"epoch {epoch + 1}/{args.epochs}", disable=args.quiet, leave=False,
                   dynamic_ncols=True)
        tot, cnt = 0.0, 0
        for i, idx in enumerate(bar):
            key, k = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(args.seed), step_no))
            xb = jnp.asarray(x_train[idx])
            new_params, new_opt_state, loss = train_step(params, opt_state, xb, k)
            loss = float(loss)
            if not math.isfinite(loss):
                where = f"epoch {epoch + 1}, step {i + 1} (global step {step_no + 1})"
                found: list[str] = []
                encode(cfg, params, preprocess(k, xb, data.levels), check=found)
                raise NonFiniteLoss(f"non-finite loss {loss} at {where}; " + (
                    f"first non-finite output in {found[0]}" if found else
                    "every layer output is finite (the non-finite value is in the prior, the sum or the gradient)"))
            params, opt_state = new_params, new_opt_state
            step_no += 1
            tot += loss
            cnt += 1
            bar.set_postfix(bpd=f"{tot / cnt:.3f}")
        train_bpd = tot / max(cnt, 1)
        tb = test_bpd(params)
        print(f"epoch {epoch + 1}/{args.epochs}: train {train_bpd:.4f} bits/dim, test {tb:.4f} bits/dim, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(ckpt_path, "wb") as f:
            pickle.dump({"params": jax.tree.map(np.asarray, params),
                         "opt_state": jax.tree.map(np.asarray, opt_state),
                         "epoch": epoch + 1, "step": step_no, "args": vars(args)}, f)
    tb = test_bpd(params)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    post = lambda x: np.clip(np.floor((np.asarray(x) + 0.5) * data.levels), 0, data.levels - 1)  # noqa: E731
    samples = post(decode(cfg, params, key=k1, n=64, temperature=0.7)) / (data.levels - 1)
    orig = jnp.asarray(x_test[:32])
    zs, _, _ = encode(cfg, params, preprocess(k2, orig, data.levels))
    recons = post(decode(cfg, params, zs)) / (data.levels - 1)
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
