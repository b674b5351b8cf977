"""fasth.jax against the same op through fasth.torch (or, while that is missing, fasth.apply on
numpy) on the CPU, in one process: forward and forward + backward, d = 1024, n = 64, float32.
Prints median times and the ratio jax / other (the target: within 1.2x).

    python benchmarks/jax_vs_torch.py [--d 1024] [--n 64] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fasth
import fasth.jax as fj


def median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--repeat", type=int, default=30)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    V = rng.standard_normal((a.d, a.d)).astype(np.float32)
    X = rng.standard_normal((a.d, a.n)).astype(np.float32)
    G = rng.standard_normal((a.d, a.n)).astype(np.float32)

    Vj, Xj, Gj = map(jnp.asarray, (V, X, G))
    fwd = jax.jit(fj.apply)
    vjp = jax.jit(lambda V, X, G: jax.vjp(fj.apply, V, X)[1](G))
    jax_fwd = median_time(lambda: fwd(Vj, Xj).block_until_ready(), a.repeat)
    jax_both = median_time(lambda: jax.block_until_ready(vjp(Vj, Xj, Gj)), a.repeat)

    try:
        import torch
        import fasth.torch as ft

        Vt = torch.from_numpy(V).requires_grad_()
        Xt = torch.from_numpy(X).requires_grad_()
        Gt = torch.from_numpy(G)
        name = "fasth.torch.apply"
        other_fwd = median_time(lambda: ft.apply(Vt.detach(), Xt.detach()), a.repeat)
        other_both = median_time(
            lambda: torch.autograd.grad(ft.apply(Vt, Xt), (Vt, Xt), Gt), a.repeat)
    except ImportError:
        name = "fasth.apply (numpy; fasth.torch missing)"
        other_fwd = median_time(lambda: fasth.apply(V, X), a.repeat)

        def both():
            out, f = fasth._api.apply_with_factors(V, X)
            fasth.apply_backward(V, out, G, factors=f)

        other_both = median_time(both, a.repeat)

    print(f"d={a.d} n={a.n} float32, CPU, median of {a.repeat}; jax {jax.__version__}")
    print(f"forward      fasth.jax {jax_fwd * 1e3:8.3f} ms   {name} {other_fwd * 1e3:8.3f} ms   "
          f"ratio {jax_fwd / other_fwd:.3f}")
    print(f"fwd + bwd    fasth.jax {jax_both * 1e3:8.3f} ms   {name} {other_both * 1e3:8.3f} ms   "
          f"ratio {jax_both / other_both:.3f}")


if __name__ == "__main__":
    main()
