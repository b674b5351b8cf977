"""How fasth.torch.orthogonal trains beside torch's parametrizations.orthogonal: the same
start, the same loss, a few learning rates, 50 steps of Adam and of SGD each.

    python examples/orthogonal_geometry.py [--d 32] [--steps 50]

The loss: ||X W^T - X Q^T||^2 / n for a random orthogonal target Q; every run starts from
the same orthogonal W0 (nn.Linear's initial weight made orthogonal). Prints the final loss
per map, optimiser and learning rate, and how far W moved in the first step."""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.utils import parametrizations

import fasth.torch as ft

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
MAPS = ("fasth", "matrix_exp", "cayley", "householder")


def layer(kind: str, W0: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(W0.shape[0], W0.shape[0], bias=False).double()
    if kind == "fasth":
        ft.orthogonal(lin)
    else:
        parametrizations.orthogonal(lin, orthogonal_map=kind)
    with torch.no_grad():
        lin.weight = W0  # the same start for every map (each map's right inverse)
    return lin


def run(kind: str, opt_name: str, lr: float, W0, X, Y, steps: int) -> tuple[float, float]:
    lin = layer(kind, W0)
    opt = (torch.optim.Adam if opt_name == "Adam" else torch.optim.SGD)(lin.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        before = lin.weight.detach().clone()
        loss = (lin(X) - Y).square().sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if first is None:
            first = float((lin.weight.detach() - before).norm())
    with torch.no_grad():
        return float((lin(X) - Y).square().sum(1).mean()), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    W0 = torch.linalg.qr(torch.randn(a.d, a.d, generator=g, dtype=torch.float64))[0]
    Q = torch.linalg.qr(torch.randn(a.d, a.d, generator=g, dtype=torch.float64))[0]
    X = torch.randn(256, a.d, generator=g, dtype=torch.float64)
    Y = X @ Q.T
    start = float((X @ W0.T - Y).square().sum(1).mean())
    print(f"d = {a.d}, {a.steps} steps, loss at the start {start:.3f}; cells: final loss "
          "(|W1 - W0|_F after the first step)")
    for opt_name in ("Adam", "SGD"):
        print(f"\n{opt_name:<12}" + "".join(f"{'lr ' + format(lr, 'g'):>20}" for lr in LRS))
        for kind in MAPS:
            cells = [run(kind, opt_name, lr, W0, X, Y, a.steps) for lr in LRS]
            print(f"{kind:<12}" + "".join(f"{loss:>11.3f} ({move:.3f})" for loss, move in cells))


if __name__ == "__main__":
    main()
