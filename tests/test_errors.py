"""Bad input to the functional API: a TypeError or ValueError whose message names the argument
(the rules every front end shares: test_front_ends.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fasth

from helpers import randn, random_v


# ---------------------------------------------------------------------------------------
# Bad input: TypeError / ValueError whose message names the argument.

def _bad_cases():
    r = np.random.default_rng(1)
    V, X = random_v(r, (5, 3)), randn(r, (5, 4))
    a, ab, m, mb = fasth.apply, fasth.apply_backward, fasth.matrix, fasth.matrix_backward
    return [
        ("V rank", lambda t: a(t(V[:, 0]), t(X)), ValueError, r"V must have at least 2"),
        ("X rank", lambda t: a(t(V), t(X[:, 0])), ValueError, r"X must have at least 2"),
        ("X rows", lambda t: a(t(V), t(X[:4])), ValueError, r"X has 4 rows.*d = 5"),
        ("int V", lambda t: a(t(V.astype(np.int64)), t(X)), TypeError, r"V has dtype int64"),
        ("complex X", lambda t: a(t(V), t(X.astype(np.complex128))), TypeError,
         r"share one dtype \(V is float64, X is complex128\)"),
        ("complex64 V, complex128 X", lambda t: a(t(V.astype(np.complex64)), t(X.astype(np.complex128))),
         TypeError, r"share one dtype \(V is complex64, X is complex128\)"),
        ("half V", lambda t: m(t(V.astype(np.float16))), TypeError, r"V has dtype float16"),
        ("bool X", lambda t: a(t(V), t(X > 0)), TypeError, r"X has dtype bool"),
        ("mixed dtypes", lambda t: a(t(V.astype(np.float32)), t(X)), TypeError,
         r"V is float32, X is float64"),
        ("batch mismatch", lambda t: a(t(np.stack([V, V])), t(np.stack([X, X, X]))),
         ValueError, r"batch dimensions of V \(2,\) and X \(3,\)"),
        ("batched V, unbatched X", lambda t: a(t(np.stack([V, V])), t(X)), ValueError,
         r"batch dimensions of V"),
        ("block 0", lambda t: a(t(V), t(X), block=0), ValueError, r"block must be"),
        ("strategy", lambda t: a(t(V), t(X), strategy="fast"), ValueError, r"strategy must be"),
        ("grad shape", lambda t: ab(t(V), t(X), t(X[:, :3])), ValueError, r"grad has shape"),
        ("out rows", lambda t: ab(t(V), t(X[:4]), t(X[:4])), ValueError, r"out has 4 rows"),
        ("factors size", lambda t: ab(t(V), t(X), t(X), factors=t(np.zeros(1))), ValueError,
         r"factors"),
        ("matrix U shape", lambda t: mb(t(V), t(X), t(X)), ValueError, r"U has shape"),
        ("matrix grad shape", lambda t: mb(t(V), t(np.eye(5)), t(X)), ValueError,
         r"grad has shape"),
        ("matrix thin", lambda t: mb(t(V), t(np.eye(5)), t(np.eye(5)), thin=True), ValueError,
         r"U has shape"),
        ("matrix int", lambda t: m(t(np.ones((3, 2), np.int32))), TypeError,
         r"V has dtype int32"),
        ("rank 1 V", lambda t: m(t(V[0])), ValueError, r"V must have at least 2 dimensions"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(xp, case):
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call(xp)


def test_mixed_libraries(rng):
    torch = pytest.importorskip("torch")
    V, X = random_v(rng, (5, 3)), randn(rng, (5, 4))
    with pytest.raises(TypeError, match=r"X is a torch array but V is a numpy array"):
        fasth.apply(V, torch.from_numpy(X))
    with pytest.raises(TypeError, match=r"grad is a numpy array but V is a torch array"):
        fasth.apply_backward(torch.from_numpy(V), torch.from_numpy(X), X)


def test_mixed_devices(device, rng):
    if device == "cpu":
        pytest.skip("needs a second device")
    import torch

    V, X = random_v(rng, (5, 3)), randn(rng, (5, 4))
    with pytest.raises(ValueError, match=r"X is on cpu"):
        fasth.apply(torch.from_numpy(V).cuda(), torch.from_numpy(X))


@pytest.mark.parametrize("which", ["V", "X"])
def test_non_array_names_the_argument(rng, which):
    args = {"V": random_v(rng, (5, 3)), "X": randn(rng, (5, 4))}
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"\b{which}\b"):
        fasth.apply(args["V"], args["X"])
