"""The suite's cases: one problem per size and the methods that solve it.

Each method is a small setup function that takes one problem (``V`` of ``d x d``
Householder vectors, the same reflectors in LAPACK's geqrf form ``A, tau``, ``X`` of
``d x n``, an output gradient ``G``) and returns closures for the forward ``U X``, the
forward + backward (returning the gradients), materialising ``U`` and, for fasth, the GEMM
and householder_product (torch.ormqr has none), forward mode by torch's forward AD."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.autograd import forward_ad as fwAD

OPS = {"apply": "forward U X", "fwd+bwd": "forward + backward of U X", "matrix": "materialise U",
       "jvp": "forward mode: U X and its tangent in a direction of every input"}
class Unavailable(Exception):
    """A method that cannot run here (not installed, wrong device or dtype)."""


@dataclass
class Problem:
    d: int
    n: int
    dtype: torch.dtype
    device: torch.device
    V: torch.Tensor  # (d, d) Householder vectors, unit diagonal, zeros above
    A: torch.Tensor  # geqrf form: vectors below the diagonal (implicit unit), tau beside
    tau: torch.Tensor
    X: torch.Tensor
    G: torch.Tensor


def wide(dtype: torch.dtype) -> torch.dtype:
    """The reference precision of a dtype: float64, or complex128 for complex dtypes."""
    return torch.complex128 if dtype.is_complex else torch.float64


def make_problem(d: int, n: int, dtype: torch.dtype, device: str, seed: int = 0) -> Problem:
    """The same numbers for every dtype (drawn in float64 or complex128), so float64 or
    complex128 is a reference."""
    g = torch.Generator().manual_seed(seed * 7919 + d * 31 + n)  # one stream per (seed, d, n)
    A, X, G = (torch.randn(*s, generator=g, dtype=wide(dtype)) for s in ((d, d), (d, n), (d, n)))
    V = torch.tril(A, -1) + torch.eye(d, dtype=A.dtype)
    tau = (2 / (V.abs() ** 2).sum(0)).to(A.dtype)
    to = lambda t: t.to(dtype=dtype, device=device).contiguous()  # noqa: E731
    return Problem(d, n, dtype, torch.device(device), to(V), to(A), to(tau), to(X), to(G))


@dataclass
class Impl:
    fwd: Callable[[], Any] | None = None
    fb: Callable[[], list] | None = None  # forward + backward, returns the gradients
    mat: Callable[[], Any] | None = None  # U
    jvp: Callable[[], Any] | None = None  # U X and its tangent (torch's forward AD)
    clear: Callable[[], None] = lambda: None  # drop gradients (before a memory measure)
    compiles: bool = False  # the first call of each closure compiles (not timed)
    torch: bool = False  # its memory is torch's (peak memory measured on CUDA)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def torch_impl(p: Problem, leaves: list[torch.Tensor], f: Callable, mat: Callable | None = None,
               forward_mode: bool = False) -> Impl:
    """Closures for a method written as ``f(*leaves) -> U X`` (and ``mat(*leaves) -> U``);
    with ``forward_mode``, ``U X`` and its tangent in a direction of every leaf."""

    def clear() -> None:
        for t in leaves:
            t.grad = None

    def fwd() -> Any:
        with torch.no_grad():
            return f(*leaves)

    def fb() -> list:
        clear()
        f(*leaves).backward(p.G)
        return [t.grad for t in leaves]

    def m() -> Any:
        with torch.no_grad():
            return mat(*leaves)  # type: ignore[misc]

    g = torch.Generator().manual_seed(1)
    dirs = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in leaves]

    def jvp() -> Any:
        with torch.no_grad(), fwAD.dual_level():
            out = f(*(fwAD.make_dual(t.detach(), d) for t, d in zip(leaves, dirs)))
            return fwAD.unpack_dual(out).tangent

    return Impl(fwd, fb, m if mat else None, clear=clear, jvp=jvp if forward_mode else None,
                torch=True)


def _eye(p: Problem) -> torch.Tensor:
    return torch.eye(p.d, dtype=p.dtype, device=p.device)


# methods --------------------------------------------------------------------------------

def m_fasth(p: Problem) -> Impl:
    import fasth.torch as ft

    return torch_impl(p, [_leaf(p.V), _leaf(p.X)], ft.apply, lambda V, X: ft.matrix(V), True)


def _baseline(name: str) -> Callable[[Problem], Impl]:
    def make(p: Problem) -> Impl:
        from .. import _baselines

        _real_only(p)
        f = getattr(_baselines, name)
        return torch_impl(p, [_leaf(p.V), _leaf(p.X)], f, lambda V, X: f(V, _eye(p)))

    return make


def _real_only(p: Problem) -> None:
    if p.dtype.is_complex:
        raise Unavailable("real dtypes only")


def m_fasth_householder_product(p: Problem) -> Impl:
    import fasth.torch as ft

    return torch_impl(p, [_leaf(p.A), _leaf(p.tau), _leaf(p.X)],
                      lambda A, tau, X: ft.householder_product(A, tau) @ X,
                      lambda A, tau, X: ft.householder_product(A, tau))


def m_gemm(p: Problem) -> Impl:
    U = torch.linalg.qr(p.A)[0]
    return torch_impl(p, [_leaf(U), _leaf(p.X)], torch.matmul, forward_mode=True)


def m_sgemm(p: Problem) -> Impl:
    from scipy.linalg import blas

    if p.device.type != "cpu":
        raise Unavailable("CPU only")
    _real_only(p)
    gemm = blas.sgemm if p.dtype == torch.float32 else blas.dgemm
    U = np.asfortranarray(torch.linalg.qr(p.A)[0].numpy())
    X = np.asfortranarray(p.X.numpy())
    return Impl(fwd=lambda: gemm(1.0, U, X))


def m_householder_product(p: Problem) -> Impl:
    hp = torch.linalg.householder_product
    return torch_impl(p, [_leaf(p.A), _leaf(p.tau), _leaf(p.X)],
                      lambda A, tau, X: hp(A, tau) @ X, lambda A, tau, X: hp(A, tau), True)


def m_ormqr(p: Problem) -> Impl:
    return torch_impl(p, [_leaf(p.A), _leaf(p.tau), _leaf(p.X)], torch.ormqr,
                      lambda A, tau, X: torch.ormqr(A, tau, _eye(p)))  # (no forward AD in torch)


def _orthogonal(kind: str) -> Callable[[Problem], Impl]:
    def make(p: Problem) -> Impl:
        from torch.nn.utils import parametrizations

        _real_only(p)
        lin = torch.nn.Linear(p.d, p.d, bias=False, dtype=p.dtype, device=p.device)
        with torch.no_grad():  # the base it keeps comes from this weight: the same for every dtype
            lin.weight.copy_(p.A)
        parametrizations.orthogonal(lin, orthogonal_map=kind)
        W0 = lin.parametrizations.weight.original
        with torch.no_grad():  # a generic point (not the identity), the same for every dtype
            W0.copy_(torch.tril(p.A, -1) / math.sqrt(p.d))
        return torch_impl(p, [W0, _leaf(p.X)], lambda W, X: lin.weight @ X, lambda W, X: lin.weight)

    return make


def m_lapack_ormqr(p: Problem) -> Impl:
    from scipy.linalg import lapack

    if p.device.type != "cpu":
        raise Unavailable("CPU only")
    _real_only(p)
    ormqr = lapack.sormqr if p.dtype == torch.float32 else lapack.dormqr
    a, tau = np.asfortranarray(p.A.numpy()), p.tau.numpy()
    X, eye = np.asfortranarray(p.X.numpy()), np.asfortranarray(np.eye(p.d, dtype=a.dtype))
    lwork = max(1, int(ormqr("L", "N", a, tau, X, -1)[1][0]))
    return Impl(fwd=lambda: ormqr("L", "N", a, tau, X, lwork)[0],
                mat=lambda: ormqr("L", "N", a, tau, eye, lwork)[0])


def m_jax_expm(p: Problem) -> Impl:
    try:
        import jax
        import jax.numpy as jnp
        from jax.scipy.linalg import expm
    except ImportError:
        raise Unavailable("not installed") from None
    _real_only(p)
    jax.config.update("jax_enable_x64", True)
    want = {"cpu": "cpu", "cuda": "gpu"}[p.device.type]
    if jax.default_backend() != want:
        raise Unavailable(f"jax runs on {jax.default_backend()}")
    A, X, G = (jnp.asarray(t.cpu().numpy()) for t in (torch.tril(p.A, -1) / math.sqrt(p.d), p.X, p.G))
    U = jax.jit(lambda A: expm(A - A.T))
    f = jax.jit(lambda A, X: U(A) @ X)
    g = jax.jit(jax.grad(lambda A, X: jnp.vdot(f(A, X), G), argnums=(0, 1)))
    return Impl(fwd=lambda: f(A, X).block_until_ready(),
                fb=lambda: [np.asarray(t) for t in jax.block_until_ready(g(A, X))],
                mat=lambda: np.asarray(U(A)), compiles=True)


def m_torch_householder(p: Problem) -> Impl:
    try:
        from torch_householder import torch_householder_orgqr
    except ImportError:
        raise Unavailable("not installed") from None
    _real_only(p)
    return torch_impl(p, [_leaf(p.V), _leaf(p.X)],  # full vectors, normalised inside
                      lambda V, X: torch_householder_orgqr(V) @ X, lambda V, X: torch_householder_orgqr(V))


@dataclass
class Method:
    make: Callable[[Problem], Impl]
    ref: str | None = None  # whose float64 gradients are the reference (None: its own)
    cap: float = 1.0  # times the time cap before it is skipped (inf: always run, every size)


METHODS: dict[str, Method] = {
    "fasth": Method(m_fasth, "sequential", cap=math.inf),
    "GEMM U@X (torch)": Method(m_gemm, cap=math.inf),
    "GEMM U@X (SciPy BLAS)": Method(m_sgemm),
    # torch's own op, the baseline most users have: measured up to 10 times past the cap
    "householder_product+matmul": Method(m_householder_product, cap=10),
    # fasth's drop-in for it, the same products (its ratio to torch's: vs_drop_in)
    "fasth householder_product+matmul": Method(m_fasth_householder_product,
                                               "householder_product+matmul", cap=math.inf),
    "torch.ormqr": Method(m_ormqr, "householder_product+matmul"),
    "orthogonal(matrix_exp)": Method(_orthogonal("matrix_exp")),
    "orthogonal(cayley)": Method(_orthogonal("cayley")),
    "sequential": Method(_baseline("sequential"), "sequential"),
    "fasth++": Method(_baseline("fasthpp"), "sequential"),
    "compact WY (torch)": Method(_baseline("compact_wy"), "sequential"),
    "LAPACK ormqr (SciPy)": Method(m_lapack_ormqr),
    "JAX expm(skew)": Method(m_jax_expm),
    "torch-householder": Method(m_torch_householder, "sequential"),
}
GEMM = "GEMM U@X (torch)"
TORCH_HP, DROP_IN_HP = "householder_product+matmul", "fasth householder_product+matmul"


