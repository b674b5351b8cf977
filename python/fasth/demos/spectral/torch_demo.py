"""The spectral demo in PyTorch: power-iteration spectral norm
(``torch.nn.utils.parametrizations.spectral_norm``, one iteration per step) against
``fasth.torch.spectral.SpectralLinear`` (exact, ``mode="normalize"``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from ...torch.spectral import SpectralLinear
from .common import (BOUND_IRESNET, METHODS, classifier_result, collect, fixed_point, flatness,
                     iresnet_result, train_loop)


def _synchronize(device: torch.device) -> None:
    """Wait for the device: a CUDA step is timed when it has run, not when it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PowerLinear(nn.Module):
    """``nn.Linear`` under torch's power-iteration spectral norm, scaled by ``bound``:
    ``y = x (bound * W / sigma_hat)^T + b`` with ``sigma_hat`` from one power iteration per
    training forward."""

    def __init__(self, in_features: int, out_features: int, bound: float = 1.0) -> None:
        super().__init__()
        self.lin = torch_spectral_norm(nn.Linear(in_features, out_features), n_power_iterations=1)
        self.bound = bound

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.bound * self.lin.weight, self.lin.bias)

    def effective_weight(self) -> Tensor:
        """The weight an evaluation forward uses now: ``bound * W / sigma_hat`` with the stored
        power-iteration vectors (eval mode, so no iteration runs and nothing is updated)."""
        was = self.lin.training
        self.lin.eval()
        try:
            return self.bound * self.lin.weight
        finally:
            self.lin.train(was)

    def claimed_norm(self) -> float:
        return self.bound


def make_linear(method: str, a: int, b: int, bound: float = 1.0) -> nn.Module:
    if method == "power":
        return PowerLinear(a, b, bound)
    if method == "fasth":
        return SpectralLinear(a, b, bound=bound, mode="normalize")
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def spectral_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (PowerLinear, SpectralLinear))]


def effective_weight(layer: nn.Module) -> Tensor:
    return layer.effective_weight() if isinstance(layer, PowerLinear) else layer.weight


def claimed_norm(layer: nn.Module) -> float:
    if isinstance(layer, PowerLinear):
        return layer.claimed_norm()
    return float(layer.spectral_norm().detach())


@torch.no_grad()
def true_norms(model: nn.Module) -> list[float]:
    """Each spectral layer's true ``||W||_2``: a dense SVD (float64) of the weight in use."""
    return [float(torch.linalg.matrix_norm(effective_weight(l).double(), 2)) for l in spectral_layers(model)]


def maxmin(x: Tensor) -> Tensor:
    """MaxMin (GroupSort of pairs): 1-Lipschitz and gradient-norm preserving."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=-1)


class MLP(nn.Module):
    def __init__(self, method: str, dims: list[int], bound: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(make_linear(method, a, b, bound) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, l in enumerate(self.layers):
            x = l(x)
            if i < len(self.layers) - 1:
                x = maxmin(x)
        return x


class Block(nn.Module):
    """``x + g(x)``, ``g = W2 maxmin(W1 x)``, ``||W1|| <= 1``, ``||W2|| <= bound``."""

    def __init__(self, method: str, d: int, hidden: int, bound: float) -> None:
        super().__init__()
        self.l1 = make_linear(method, d, hidden, 1.0)
        self.l2 = make_linear(method, hidden, d, bound)

    def g(self, x: Tensor) -> Tensor:
        return self.l2(maxmin(self.l1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.g(x)

    @torch.no_grad()
    def inverse(self, y: Tensor, tol: float = 1e-5, max_iter: int = 200) -> tuple[Tensor, int, bool]:
        """Fixed point ``x = y - g(x)``; stops when every row moved by < tol * |y|."""
        scale = y.norm(dim=-1).clamp_min(1e-12)
        return fixed_point(lambda x: y - self.g(x), y.clone(),
                           lambda a, b: float(((a - b).norm(dim=-1) / scale).max()), tol, max_iter)


class IResNet(nn.Module):
    def __init__(self, method: str, d: int, hidden: int, blocks: int, classes: int, bound: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(method, d, hidden, bound) for _ in range(blocks))
        self.head = nn.Linear(d, classes)

    def features(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _train(model, X, y, args, bar, temperature: float):
    """Adam on cross-entropy of ``temperature * logits``; returns ms/step and the norm history."""
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step(xb, yb):
        loss = nn.functional.cross_entropy(temperature * model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _synchronize(X.device)

    model.train()
    out = train_loop(lambda idx: (X[idx], y[idx]), step, X.shape[0], args, bar,
                     lambda: torch.randperm(X.shape[0], generator=gen),
                     lambda: (true_norms(model), [claimed_norm(l) for l in spectral_layers(model)]))
    model.eval()
    return out


def run_classifier(method, data, args, bar):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(args.seed)
    dims = [Xtr.shape[1], args.width, args.width, args.width, 10]
    model = MLP(method, dims).to(args.device)
    ms, hist = _train(model, Xtr, ytr, args, bar, temperature=16.0)
    with torch.no_grad():
        logits = model(Xte).double().cpu().numpy()
    return classifier_result(logits, yte.cpu().numpy(), true_norms(model),
                             [claimed_norm(l) for l in spectral_layers(model)], ms, hist), dims, model


def run_iresnet(method, data, args, bar):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(args.seed)
    d, hidden = Xtr.shape[1], 128
    model = IResNet(method, d, hidden, args.blocks, 10, BOUND_IRESNET).to(args.device)
    ms, hist = _train(model, Xtr, ytr, args, bar, temperature=1.0)
    with torch.no_grad():
        acc = float((model(Xte).argmax(-1) == yte).float().mean())
        # Invert the residual stack block by block, last first.
        z = model.features(Xte)
        iters, ok = [], True
        for b in reversed(model.blocks):
            z, it, conv = b.inverse(z)
            iters.append(it)
            ok &= conv
        iters.reverse()
        err = float(((z - Xte).norm(dim=-1) / Xte.norm(dim=-1).clamp_min(1e-12)).max())
        weights = [effective_weight(l).double().cpu().numpy() for l in spectral_layers(model)]
    res, arch = iresnet_result(acc, true_norms(model), iters, err, ok, ms, hist, args.blocks, d, hidden,
                               flatness(weights))
    return res, arch, model


def timing_step(method: str, d: int, n: int, device: torch.device, seed: int):
    """One synchronised Adam step of a 3-layer d x d spectral MLP on a random (n, d) batch."""
    torch.manual_seed(seed)
    model = MLP(method, [d, d, d, d]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X = torch.randn(n, d, device=device)

    def step():
        loss = model(X).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _synchronize(X.device)

    return step


def run(args, data, save=lambda part, row: None) -> dict:
    dev = torch.device(args.device)
    args.device = dev
    data = tuple(torch.as_tensor(a, device=dev) for a in data)
    return collect("torch", str(dev), data, args, run_classifier, run_iresnet,
                   lambda m, d, n: timing_step(m, d, n, dev, args.seed), save)
