"""fasth.jax against the same op through fasth.torch (or, where torch is missing, fasth.apply on
numpy) on the CPU, in one process: forward and forward + backward, d = 1024, n = 64, float32,
the two sides interleaved. Prints median times and the ratio jax / other, repeat by repeat
(what the JAX adapter's overhead over the torch one is).

    python benchmarks/jax_vs_torch.py [--d 1024] [--n 64] [--repeat 30]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import fasth
import fasth.jax as fj
from fasth.bench.timing import interleaved, ratio, summary


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
    jax_fns = (lambda: fwd(Vj, Xj).block_until_ready(), lambda: jax.block_until_ready(vjp(Vj, Xj, Gj)))

    try:
        import torch
        import fasth.torch as ft

        Vt = torch.from_numpy(V).requires_grad_()
        Xt = torch.from_numpy(X).requires_grad_()
        Gt = torch.from_numpy(G)
        name = "fasth.torch.apply"
        other_fns = (lambda: ft.apply(Vt.detach(), Xt.detach()),
                     lambda: torch.autograd.grad(ft.apply(Vt, Xt), (Vt, Xt), Gt))
    except ImportError:
        name = "fasth.apply (numpy; fasth.torch missing)"
        other_fns = (lambda: fasth.apply(V, X), lambda: fasth.apply_backward(V, fasth.apply(V, X), G))

    print(f"d={a.d} n={a.n} float32, CPU, medians of {a.repeat} interleaved repeats; jax {jax.__version__}")
    for what, jf, of in zip(("forward  ", "fwd + bwd"), jax_fns, other_fns):
        t = interleaved({"jax": jf, "other": of}, a.repeat, warmup=2)  # the first jax call compiles
        print(f"{what}    fasth.jax {summary(t['jax'])['median'] * 1e3:8.3f} ms   {name} "
              f"{summary(t['other'])['median'] * 1e3:8.3f} ms   ratio {ratio(t['jax'], t['other'])['median']:.3f}")


if __name__ == "__main__":
    main()
