"""The three front ends (``fasth.apply`` on numpy arrays, ``fasth.torch``, ``fasth.jax``)
accept and refuse the same things: each mistake raises the same exception type through all
three, with a message that names the function and the argument (fasth._spec holds the
checks)."""

from __future__ import annotations

import numpy as np
import pytest

import fasth
from fasth import _core, _spec

FRONTS = ["numpy", "torch", "jax"]


class Front:
    """One front end's functions on arrays made from numpy arrays."""

    def __init__(self, name: str):
        self.name = name
        if name == "torch":
            import torch
            import fasth.torch as mod

            self.array = torch.from_numpy
        elif name == "jax":
            pytest.importorskip("jax")
            import jax.numpy as jnp
            import fasth.jax as mod

            self.array = jnp.asarray
        else:
            mod, self.array = fasth, np.asarray
        self.mod = mod

    def fn(self, op: str) -> str:
        return _spec.function_name(self.name, op)

    def apply(self, V, X, *args, **kw):
        wrap = lambda a: self.array(a) if isinstance(a, np.ndarray) else a  # noqa: E731
        return self.mod.apply(wrap(V), wrap(X), *args, **kw)

    def matrix(self, V, *args, **kw):
        return self.mod.matrix(self.array(V) if isinstance(V, np.ndarray) else V, *args, **kw)


@pytest.fixture(params=FRONTS)
def front(request) -> Front:
    f = Front(request.param)
    if f.name != "jax":
        yield f
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # float64 as the other front ends take it
    yield f
    jax.config.update("jax_enable_x64", previous)


def _vx(d=5, k=3, n=4, dtype=np.float64):
    r = np.random.default_rng(0)
    return r.standard_normal((d, k)).astype(dtype), r.standard_normal((d, n)).astype(dtype)


def _raises(exc, fn: str, *names: str):
    """pytest.raises for `exc` with a message naming the function and every one of `names`."""
    pattern = "".join(rf"(?=.*\b{n}\b)" for n in names)
    return pytest.raises(exc, match=rf"(?s)^{fn.replace('.', '[.]')}: {pattern}")


@pytest.mark.parametrize("value", ["no", 1, None, 0.0])
def test_transpose_must_be_a_bool(front, value):
    V, X = _vx()
    with _raises(TypeError, front.fn("apply"), "transpose"):
        front.apply(V, X, value)


def test_thin_must_be_a_bool(front):
    with _raises(TypeError, front.fn("matrix"), "thin"):
        front.matrix(_vx()[0], "yes")


def test_numpy_bools_are_bools(front):
    V, X = _vx()
    front.apply(V, X, np.bool_(True))


@pytest.mark.parametrize("block,exc", [(0, ValueError), (-2, ValueError), (2.5, TypeError),
                                       ("4", TypeError), (True, TypeError)])
def test_block_must_be_a_positive_integer(front, block, exc):
    V, X = _vx()
    with _raises(exc, front.fn("apply"), "block"):
        front.apply(V, X, block=block)
    with _raises(exc, front.fn("matrix"), "block"):
        front.matrix(V, block=block)


def test_strategy_must_be_named(front):
    V, X = _vx()
    with _raises(ValueError, front.fn("apply"), "strategy"):
        front.apply(V, X, strategy="fast")


@pytest.mark.parametrize("which", ["V", "X"])
@pytest.mark.parametrize("kind", ["list", "other"])
def test_not_an_array_names_the_argument(front, which, kind):
    """A list, or an array of a library the front end does not take (numpy for torch)."""
    V, X = _vx()
    args = {"V": front.array(V), "X": front.array(X)}
    wrong = {"V": V, "X": X}[which]
    args[which] = wrong.tolist() if kind == "list" else wrong if front.name == "torch" else object()
    with _raises(TypeError, front.fn("apply"), which):
        front.mod.apply(args["V"], args["X"])


def test_wrong_rows_report_the_whole_shape(front):
    V, X = _vx(d=5, n=3)
    with _raises(ValueError, front.fn("apply"), "X") as e:
        front.apply(V, np.zeros((7, 3)))
    assert "(7, 3)" in str(e.value)
    with _raises(ValueError, front.fn("apply"), "V"):
        front.apply(V[:, 0], X)


def test_dtypes_name_the_argument_and_list_what_is_taken(front):
    V, X = _vx()
    with _raises(TypeError, front.fn("apply"), "X") as e:
        front.apply(V, X.astype(np.int32))
    taken = _spec.accepted_dtypes(front.name)
    assert all(t in str(e.value) for t in taken), (str(e.value), taken)
    with _raises(TypeError, front.fn("apply"), "V", "X"):
        front.apply(V.astype(np.float32), X)


def test_half_precision_where_the_library_has_it(front):
    V, X = _vx()
    if front.name == "numpy":
        with _raises(TypeError, front.fn("matrix"), "V"):
            front.matrix(V.astype(np.float16))
        return
    out = front.apply(V.astype(np.float16), X.astype(np.float16))
    assert str(out.dtype).endswith("float16")


@pytest.mark.parametrize("front_name", ["torch", "jax"])
def test_ormqr_flags_must_be_bools(front_name):
    f = Front(front_name)
    A, C = _vx(5, 3, 4)
    tau = np.ones(3)
    for name, kw in (("left", {"left": "no"}), ("transpose", {"transpose": 1})):
        with _raises(TypeError, f.fn("ormqr"), name):
            f.mod.ormqr(f.array(A), f.array(tau), f.array(C), **kw)


def test_codes_are_the_cores():
    assert (_spec.APPLY, _spec.MATRIX) == (int(_core.Op.apply.value), int(_core.Op.matrix.value))
    assert (_spec.HOUSEHOLDER, _spec.LAPACK) == (int(_core.Kind.householder.value),
                                                 int(_core.Kind.lapack.value))
    assert [int(s.value) for s in (_core.Strategy.automatic, _core.Strategy.blockwise,
                                   _core.Strategy.materialize)] == [0, 1, 2]


# ---------------------------------------------------------------------------------------
# Forward mode works in both front ends (tests/test_forward_mode.py checks its values); a
# second derivative in V is refused with one message (fasth._spec.second_order_message).

def _torch_forward_modes():
    import torch

    return {
        "jvp": lambda f, V: torch.func.jvp(f, (V,), (V,))[1],
        "jacfwd": lambda f, V: torch.func.jacfwd(f)(V),
        "forward_ad": _forward_ad,
    }


def _forward_ad(f, V):
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        return fwAD.unpack_dual(f(fwAD.make_dual(V, V.clone()))).tangent


@pytest.mark.parametrize("mode", ["jvp", "jacfwd", "forward_ad"])
@pytest.mark.parametrize("op", ["apply", "matrix"])
def test_torch_forward_mode_works_and_second_order_in_v_says_why_not(mode, op):
    import fasth.torch as ft
    import torch

    V, X = (torch.from_numpy(a) for a in _vx())
    f = (lambda V: ft.apply(V, X)) if op == "apply" else ft.matrix
    got = _torch_forward_modes()[mode](f, V)
    J = torch.func.jacrev(f)(V)
    want = J if mode == "jacfwd" else torch.einsum("...ij,ij->...", J, V)
    torch.testing.assert_close(got, want)
    with _raises(RuntimeError, f"fasth.torch.{op}", "gradient", "differentiated"):
        torch.func.hessian(lambda V: f(V).sum())(V)


@pytest.mark.parametrize("mode", ["jvp", "jacfwd", "hessian"])
@pytest.mark.parametrize("op", ["apply", "matrix"])
def test_jax_forward_mode_works_and_second_order_in_v_says_why_not(mode, op):
    jax = pytest.importorskip("jax")
    import fasth.jax as fj
    import jax.numpy as jnp

    V, X = (jnp.asarray(a) for a in _vx())
    f = (lambda V: fj.apply(V, X)) if op == "apply" else fj.matrix
    if mode == "hessian":
        with _raises(NotImplementedError, f"fasth.jax.{op}", "gradient", "differentiated"):
            jax.hessian(lambda V: f(V).sum())(V)
        return
    J = jax.jacrev(f)(V)
    got = jax.jvp(f, (V,), (V,))[1] if mode == "jvp" else jax.jacfwd(f)(V)
    want = jnp.einsum("...ij,ij->...", J, V) if mode == "jvp" else J
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
