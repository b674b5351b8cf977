"""Data sets as integer images ``(N, C, H, W)`` (uint8) with their number of levels.

- ``digits``: scikit-learn's bundled 8x8 digits (values 0..16: 17 levels, no download).
- ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist`` (which
  puts them in ``/usr/share/datasets/fashion-mnist``) read directly (gzipped or not), padded
  from 28x28 to 32x32.
- ``cifar10``: a local torchvision-format folder (``cifar-10-batches-py``).

Missing data raises ``FileNotFoundError`` naming the path searched; nothing is downloaded and
there is no fallback to another data set."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "fashion-mnist", "cifar10")
DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",  # where the Debian package puts it
    "cifar10": "./data",
}


@dataclass
class Data:
    name: str
    train: np.ndarray  # (N, C, H, W) uint8 in [0, levels)
    test: np.ndarray
    levels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def load(name: str, data_dir: str | None = None, n_bits: int | None = None) -> Data:
    if name == "digits":
        data = _digits()
    elif name == "fashion-mnist":
        data = _fashion(Path(data_dir or DEFAULT_DIRS[name]))
    elif name == "cifar10":
        data = _cifar(Path(data_dir or DEFAULT_DIRS[name]))
    else:
        raise ValueError(f"data must be one of {DATASETS}, got {name!r}")
    if n_bits is not None:
        if data.levels != 256:
            raise ValueError(f"--n-bits applies to 8-bit data; {name} has {data.levels} grey levels")
        if not 1 <= n_bits <= 8:
            raise ValueError(f"--n-bits must be in 1..8, got {n_bits}")
        shift = 8 - n_bits
        data = Data(name, data.train >> shift, data.test >> shift, 2 ** n_bits)
    return data


def _digits() -> Data:
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16
    perm = np.random.default_rng(0).permutation(len(x))
    x = x[perm]
    n_test = 297
    return Data("digits", x[n_test:], x[:n_test], 17)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\0\0" or raw[2] != 8:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", ndim, 4).astype(int)
    return np.frombuffer(raw, np.uint8, int(np.prod(dims)), 4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        hits = sorted(root.rglob(name)) if root.is_dir() else []
        if hits:
            return hits[0]
    return None


def _fashion(root: Path) -> Data:
    files = {s: _find(root, f"{s}-images-idx3-ubyte") for s in ("train", "t10k")}
    missing = [s for s, p in files.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST: no {', '.join(f'{s}-images-idx3-ubyte[.gz]' for s in missing)} under "
            f"{root} (install the Debian package dataset-fashion-mnist or pass --data-dir)")
    pad = ((0, 0), (0, 0), (2, 2), (2, 2))  # 28x28 -> 32x32, divisible by 2^3
    tr, te = (np.pad(_read_idx(files[s])[:, None], pad) for s in ("train", "t10k"))
    return Data("fashion-mnist", tr, te, 256)


def _cifar(root: Path) -> Data:
    folder = root if (root / "data_batch_1").exists() else root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10: {folder} lacks {', '.join(missing)} (expected the torchvision "
            f"cifar-10-batches-py folder; pass --data-dir)")

    def read(n: str) -> np.ndarray:
        with open(folder / n, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)

    return Data("cifar10", np.concatenate([read(n) for n in names[:5]]), read(names[5]), 256)
