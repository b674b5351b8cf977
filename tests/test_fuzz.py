"""Property-based fuzz of the functional API: a correct result, or a TypeError/ValueError when
the input is bad, never a crash."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fasth

from conftest import LAYOUTS
from helpers import STRATEGIES, assert_close, randn, random_v
from reference import ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad


# ---------------------------------------------------------------------------------------
# Property-based fuzz: a correct result, or a TypeError/ValueError when the input is bad.

FUZZ_DTYPES = ["float32", "float64", "float16", "int64", "complex64", "complex128"]


@st.composite
def fuzz_case(draw):
    op = draw(st.sampled_from(["apply", "apply_backward", "matrix", "matrix_backward"]))
    d = draw(st.integers(0, 9))
    k = draw(st.integers(0, d + 3))  # any k: more reflectors than rows too
    n = draw(st.integers(0, 6))
    xbatch = draw(st.sampled_from([(), (0,), (1,), (3,), (2, 2)]))
    vbatch = draw(st.sampled_from([(), xbatch, xbatch, (1,), (2,)]))
    dtypes = draw(st.sampled_from([("float32",) * 3, ("float64",) * 3, ("float64",) * 3,
                                   *((a, b, b) for a in FUZZ_DTYPES for b in FUZZ_DTYPES)]))
    return dict(
        op=op, d=d, k=k, n=n, xbatch=xbatch, vbatch=vbatch, dtypes=dtypes,
        xrows=draw(st.sampled_from([d, d, d, d + 1])),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        transpose=draw(st.booleans()), thin=draw(st.booleans()),
        strategy=draw(st.sampled_from(STRATEGIES)),
        block=draw(st.one_of(st.none(), st.integers(-1, 11))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _fuzz_error(c) -> bool:
    """Whether the case is bad input."""
    vdt, xdt, gdt = c["dtypes"]
    used = {"apply": {vdt, xdt}, "apply_backward": {vdt, xdt, gdt}, "matrix": {vdt},
            "matrix_backward": {vdt, gdt}}[c["op"]]
    if not used <= {"float32", "float64", "complex64", "complex128"} or len(used) > 1:
        return True
    if c["block"] is not None and c["block"] < 1:
        return True
    if c["op"].startswith("apply"):
        vb, xb = c["vbatch"], c["xbatch"]
        return c["xrows"] != c["d"] or (vb != xb and math.prod(vb) != 1)
    return False


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=fuzz_case())
def test_fuzz(xp, c):
    rng = np.random.default_rng(c["seed"])
    d, k, n, (vdt, xdt, gdt) = c["d"], c["k"], c["n"], c["dtypes"]
    lv, lx, lg = c["layouts"]
    V = random_v(rng, (*c["vbatch"], d, k), vdt)
    expect_error = _fuzz_error(c)
    if c["op"].startswith("apply"):
        X = randn(rng, (*c["xbatch"], c["xrows"], n), xdt)
        kw = dict(block=c["block"], strategy=c["strategy"])
        try:
            out = fasth.apply(xp(V, lv), xp(X, lx), c["transpose"], **kw)
            if c["op"] == "apply_backward":
                G = randn(rng, X.shape, gdt)
                # feed back the result, in a possibly different layout
                back = xp(xp.numpy(out), lx) if vdt == xdt == gdt else xp(X, lx)
                dV, dX = fasth.apply_backward(xp(V, lv), back, xp(G, lg), c["transpose"], **kw)
        except (TypeError, ValueError):
            assert expect_error, "valid input was rejected"
            return
        assert not expect_error, "bad input was accepted"
        dt = np.dtype(vdt).name
        assert_close(xp.numpy(out), ref_apply(V, X, c["transpose"]), dt, d)
        if c["op"] == "apply_backward":
            rdV, rdX = ref_apply_grad(V, X, G, c["transpose"])
            assert_close(xp.numpy(dV), rdV, dt, d + n * max(1, math.prod(c["xbatch"])))
            assert_close(xp.numpy(dX), rdX, dt, d)
    else:
        try:
            U = fasth.matrix(xp(V, lv), c["thin"], block=c["block"])
            if c["op"] == "matrix_backward":
                G = randn(rng, xp.numpy(U).shape, gdt)
                dV = fasth.matrix_backward(xp(V, lv), xp(xp.numpy(U), lx), xp(G, lg),
                                           c["thin"], block=c["block"])
        except (TypeError, ValueError):
            assert expect_error, "valid input was rejected"
            return
        assert not expect_error, "bad input was accepted"
        dt = np.dtype(vdt).name
        assert_close(xp.numpy(U), ref_matrix(V, c["thin"]), dt, d)
        if c["op"] == "matrix_backward":
            assert_close(xp.numpy(dV), ref_matrix_grad(V, G, c["thin"]), dt, 2 * d)
