"""torch's own OpInfo samples for ``linalg.householder_product`` and ``ormqr`` through fasth's
drop-ins, with the checks torch's suite runs on those OpInfos (test_ops.py,
test_ops_gradients.py, test_ops_fwd_gradients.py, functorch's test_ops.py), and the same
sample shapes through the JAX drop-ins against ``jax.lax.linalg``.

The checks follow torch's OpInfo settings (fast-mode gradcheck, check_batched_gradgrad, ...),
with batched gradients on for both ops (householder_product's OpInfo turns them off for
torch's backward) and forward mode for ormqr too (torch's has none).

What fasth does not support yet is listed in REFUSED, the one place that says so: there each
sample must raise fasth's error or pass the check (never a wrong number), and at least one
sample must raise, so an entry whose support has landed fails until it is removed."""

from __future__ import annotations

import itertools
import re
from typing import Callable, NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.opinfo.core import SampleInput  # noqa: E402

import fasth.torch as ft  # noqa: E402


class Refusal(NamedTuple):
    error: type[BaseException]
    match: str  # a regex on the message: fasth's words, not a mismatch report


_COMPLEX = Refusal(TypeError, r"fasth\.(torch|jax)\.\w+: A has dtype complex")
_COMPLEX_TANGENT = Refusal(RuntimeError, r"fasth.*forward mode \(tangent\) takes real arrays only")
_SECOND_IN_V = Refusal(RuntimeError, r"fasth\.(torch|jax)\.\w+: the gradient of V cannot be "
                                     r"differentiated again")

# (op, category, dtype kind) -> what fasth raises there; "*" matches any. Categories: values,
# grad, gradgrad, forward, fwgrad_bwgrad, vmap, vmapvjp, compile (torch); jax_values,
# jax_rev (check_grads order 1, rev), jax_fwd (order 1, fwd), jax_order2 (order 2, fwd and rev).
REFUSED: dict[tuple[str, str, str], Refusal] = {
    ("*", "gradgrad", "*"): _SECOND_IN_V,
    ("*", "fwgrad_bwgrad", "real"): _SECOND_IN_V,
    ("*", "forward", "complex"): _COMPLEX_TANGENT,
    ("*", "fwgrad_bwgrad", "complex"): _COMPLEX_TANGENT,
    ("*", "jax_values", "complex"): _COMPLEX,
    ("*", "jax_rev", "complex"): _COMPLEX,
    ("*", "jax_fwd", "complex"): _COMPLEX,
    ("*", "jax_order2", "complex"): _COMPLEX,
    ("*", "jax_order2", "real"): _SECOND_IN_V,
}


def refusal(op: str, category: str, dtype) -> Refusal | None:
    kind = "complex" if getattr(dtype, "is_complex", False) or "complex" in str(dtype) else "real"
    for (o, c, k), r in REFUSED.items():
        if o in ("*", op) and c in ("*", category) and k in ("*", kind):
            return r
    return None


def refused_by(r: Refusal, e: BaseException | None) -> bool:
    """Whether e, or an error it wraps (torch.compile's, gradcheck's), is the refusal."""
    while e is not None:
        if isinstance(e, r.error) and re.search(r.match, str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def run_samples(op: str, category: str, dtype, samples, check: Callable) -> None:
    """check(sample) for each sample; where REFUSED lists the case, fasth's error or a pass."""
    r = refusal(op, category, dtype)
    raised = 0
    for i, s in enumerate(samples):
        if r is None:
            check(s)
            continue
        try:
            check(s)
        except Exception as e:
            if not refused_by(r, e):
                raise AssertionError(f"{op} {category} {dtype} sample {i}: expected fasth's "
                                     f"refusal /{r.match}/, got: {e!r}") from e
            raised += 1
    if r is not None:
        assert raised, (f"REFUSED lists ({op}, {category}, {dtype}) but every sample passed: "
                        "remove the entry")


# ---------------------------------------------------------------------------------------
# torch's OpInfos and fasth's drop-ins

OPS = {"linalg.householder_product": ft.householder_product, "ormqr": ft.ormqr}
OPINFO = {o.name: o for o in op_db if o.name in OPS}
CPU_DTYPES = sorted(set.intersection(*(set(o.supported_dtypes("cpu")) for o in OPINFO.values())),
                    key=str)
# gradcheck's dtypes in test_ops_gradients.py / test_ops_fwd_gradients.py; functorch's float.
GRAD_DTYPES = [d for d in (torch.float64, torch.complex128) if d in CPU_DTYPES]
VMAP_DTYPES = [d for d in (torch.float32, torch.complex64) if d in CPU_DTYPES]


def samples(name: str, dtype, requires_grad: bool = False) -> list[SampleInput]:
    torch.manual_seed(0)
    return list(OPINFO[name].sample_inputs("cpu", dtype, requires_grad=requires_grad))


def call(fn, s: SampleInput):
    return fn(s.input, *s.args, **s.kwargs)


def tensors(s: SampleInput) -> tuple:
    return (s.input, *s.args)


def with_tensors(fn, s: SampleInput):
    """fn as a function of the sample's tensors (gradcheck's form), its kwargs bound."""
    return lambda *t: fn(*t, **s.kwargs)


def one_per(cases: list[SampleInput], key: Callable) -> list[SampleInput]:
    """One sample for each key, the i-th key's i-th sample (ormqr's (left, transpose) in
    turn): for checks that compile each shape afresh."""
    groups: dict = {}
    for s in cases:
        groups.setdefault(key(s), []).append(s)
    return [g[i % len(g)] for i, g in enumerate(groups.values())]


def tol(name: str, dtype) -> dict:
    # householder_product's OpInfo loosens complex64 (ormqr's products are the same).
    return dict(atol=1e-3, rtol=1e-3) if dtype == torch.complex64 else {}


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_values(name, dtype):
    """TestCommon's comparison: the drop-in gives torch's values on every sample."""
    def check(s):
        torch.testing.assert_close(call(OPS[name], s), call(OPINFO[name].op, s), **tol(name, dtype))
    run_samples(name, "values", dtype, samples(name, dtype), check)


@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_gradcheck(name, dtype):
    """test_fn_grad's gradcheck (fast mode, undefined gradients, gradient dtypes), and
    batched gradients (gradcheck's vmap over the backward) for both ops, where
    householder_product's OpInfo turns them off for torch's backward."""
    op = OPINFO[name]

    def check(s):
        assert torch.autograd.gradcheck(
            with_tensors(OPS[name], s), tensors(s), check_batched_grad=True,
            check_grad_dtypes=True, nondet_tol=op.gradcheck_nondet_tol,
            fast_mode=op.gradcheck_fast_mode, check_undefined_grad=True)
    run_samples(name, "grad", dtype, samples(name, dtype, True), check)


@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_gradgradcheck(name, dtype):
    """test_fn_gradgrad: gradgradcheck with contiguous and non-contiguous grad outputs."""
    gradgrad_samples(name, dtype, "gradgrad",
                     check_batched_grad=OPINFO[name].check_batched_gradgrad)


def gradgrad_samples(name, dtype, phase, **checks):
    """gradgradcheck on every sample, with contiguous and non-contiguous grad outputs."""
    op = OPINFO[name]

    def check(s):
        for non_contig in (False, True):
            assert torch.autograd.gradgradcheck(
                with_tensors(OPS[name], s), tensors(s), gen_non_contig_grad_outputs=non_contig,
                check_grad_dtypes=True, nondet_tol=op.gradcheck_nondet_tol,
                fast_mode=op.gradcheck_fast_mode, **checks)
    run_samples(name, phase, dtype, samples(name, dtype, True), check)


@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_forward_mode(name, dtype):
    """test_forward_mode_AD's gradcheck (forward mode only), for ormqr too (torch's has none);
    and slow mode on a sample of each kind, whose dual numbers are made of detached inputs, as
    users make them with torch.autograd.forward_ad."""
    op = OPINFO[name]
    cases = samples(name, dtype, True)
    slow = {id(s) for s in one_per(cases, lambda s: (s.input.dim(), s.input.numel() == 0))}

    def check(s):
        for fast in (False, True) if id(s) in slow else (True,):
            assert torch.autograd.gradcheck(
                with_tensors(OPS[name], s), tensors(s), check_forward_ad=True,
                check_backward_ad=False, check_batched_grad=False,
                check_batched_forward_grad=op.check_batched_forward_grad, check_grad_dtypes=True,
                nondet_tol=op.gradcheck_nondet_tol, fast_mode=fast, check_undefined_grad=True)
    run_samples(name, "forward", dtype, cases, check)


@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_fwgrad_bwgrad(name, dtype):
    """test_fn_fwgrad_bwgrad: forward-over-reverse gradgradcheck."""
    gradgrad_samples(name, dtype, "fwgrad_bwgrad", check_fwd_over_rev=True,
                     check_rev_over_rev=False, check_batched_grad=False,
                     check_undefined_grad=False)


# ---------------------------------------------------------------------------------------
# torch.func.vmap over the samples (functorch's exhaustive batched inputs), and of a VJP

B = 3  # not the samples' own batch sizes (0, 2, 1)


def batched(t, dim: int | None):
    """t with a mapped dimension of B at `dim`: B different examples (None: t itself)."""
    if dim is None:
        return t
    scale = torch.tensor([1.0, -0.5, 0.75], dtype=t.real.dtype)
    return torch.stack([t * c for c in scale], dim=dim if dim >= 0 else t.dim() + 1 + dim)


def in_dims_choices(n: int, exhaustive: bool = True):
    """Every mapped / unmapped choice for n arguments (mapped at 0), or each argument alone
    and all; and all mapped last."""
    if exhaustive:
        yield from (d for d in itertools.product((None, 0), repeat=n) if d != (None,) * n)
    else:
        yield from (tuple(0 if j == i else None for j in range(n)) for i in range(n))
        yield (0,) * n
    yield (-1,) * n


def example(args, dims, i):
    return [a if d is None else a.select(d, i) for a, d in zip(args, dims)]


@pytest.mark.parametrize("dtype", VMAP_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_vmap(name, dtype):
    """vmap of the drop-in over every choice of mapped arguments gives torch's op example by
    example (an empty batch of reflectors under a mapped C among them)."""
    def check(s):
        args = [t.detach() for t in tensors(s)]
        for dims in in_dims_choices(len(args)):
            bargs = [batched(a, d) for a, d in zip(args, dims)]
            got = torch.func.vmap(with_tensors(OPS[name], s), in_dims=dims)(*bargs)
            want = torch.stack([OPINFO[name].op(*example(bargs, dims, i), **s.kwargs)
                                for i in range(B)])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    run_samples(name, "vmap", dtype, samples(name, dtype), check)


def vjp_of(fn, s: SampleInput):
    """(primals..., cotangent) -> the gradients of fn's output against the cotangent."""
    def f(*args):
        out, pull = torch.func.vjp(with_tensors(fn, s), *args[:-1])
        return pull(args[-1])
    return f


def eager_vjp(fn, s: SampleInput, *args):
    """The same gradients through autograd, outside torch.func."""
    primals = [a.detach().requires_grad_() for a in args[:-1]]
    return torch.autograd.grad(fn(*primals, **s.kwargs), primals, args[-1], allow_unused=True)


@pytest.mark.parametrize("dtype", VMAP_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_vmapvjp(name, dtype):
    """functorch's test_vmapvjp: vmap over primals and cotangents of the drop-in's VJP (per-
    sample gradients, with shared or mapped reflectors) against its VJP example by example
    through autograd (whose values gradcheck checks): each argument mapped alone, all."""
    def check(s):
        args = [t.detach() for t in tensors(s)]
        g = torch.randn_like(call(OPINFO[name].op, s))
        args.append(g)
        for dims in in_dims_choices(len(args), exhaustive=False):
            bargs = [batched(a, d) for a, d in zip(args, dims)]
            got = torch.func.vmap(vjp_of(OPS[name], s), in_dims=dims)(*bargs)
            want = [eager_vjp(OPS[name], s, *example(bargs, dims, i)) for i in range(B)]
            for j, gj in enumerate(got):
                torch.testing.assert_close(gj, torch.stack([w[j] for w in want]),
                                           atol=1e-4, rtol=1e-4)
    run_samples(name, "vmapvjp", dtype, samples(name, dtype), check)


# ---------------------------------------------------------------------------------------
# torch.compile

def grads(out, args, g) -> list:
    """The gradients of <out, g> in args, zeros for those out does not reach (an empty
    output's graph may not reach its inputs)."""
    got = torch.autograd.grad(out, args, g, allow_unused=True)
    return [torch.zeros_like(a) if d is None else d for a, d in zip(args, got)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64], ids=str)
@pytest.mark.parametrize("name", OPS)
def test_compile(name, dtype):
    """torch.compile (a full graph) of the drop-in and its backward gives torch's eager values
    and gradients."""
    torch._dynamo.reset()
    cases = one_per(samples(name, dtype, True), lambda s: (s.input.dim(), s.input.numel() == 0))

    def check(s):
        fn = torch.compile(with_tensors(OPS[name], s), fullgraph=True, dynamic=False)
        args = tensors(s)
        got = fn(*args)
        want = call(OPINFO[name].op, s)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        g = torch.randn_like(want)
        for a, b in zip(grads(got, args, g), grads(want, args, g)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with torch._dynamo.config.patch(recompile_limit=len(cases) + 1):  # a graph per shape
        run_samples(name, "compile", dtype, cases, check)


# ---------------------------------------------------------------------------------------
# The JAX drop-ins against jax.lax.linalg, on the same sample shapes

@pytest.fixture
def jax():
    jax = pytest.importorskip("jax")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # float64 and complex128 for these tests only
    yield jax
    jax.config.update("jax_enable_x64", previous)


def jax_samples(name: str, dtype) -> list[tuple[list[np.ndarray], dict]]:
    """(arrays, kwargs) of the samples, one for each shape of A: XLA compiles each shape
    afresh, and all 144 take minutes."""
    return [([t.detach().numpy() for t in tensors(s)], s.kwargs)
            for s in one_per(samples(name, dtype), lambda s: s.input.shape)]


def jax_fns(jax, name: str):
    """(fasth's drop-in, jax.lax.linalg's function)."""
    import fasth.jax as fj

    fn = name.removeprefix("linalg.")
    return getattr(fj, fn), getattr(jax.lax.linalg, fn)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_jax_values(jax, name, dtype):
    """The JAX drop-in gives jax.lax.linalg's values (under jit) on every sample shape."""
    mine, theirs = jax_fns(jax, name)

    def check(sample):
        arrays, kw = sample
        args = [jax.numpy.asarray(a) for a in arrays]
        got = jax.jit(lambda *a: mine(*a, **kw))(*args)
        want = theirs(*args, **kw)
        torch.testing.assert_close(torch.from_numpy(np.array(got)),
                                   torch.from_numpy(np.array(want)), **tol(name, dtype))
    run_samples(name, "jax_values", dtype, jax_samples(name, dtype), check)


@pytest.mark.parametrize("category,order,modes", [
    ("jax_rev", 1, ("rev",)), ("jax_fwd", 1, ("fwd",)), ("jax_order2", 2, ("fwd", "rev"))])
@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPS)
def test_jax_check_grads(jax, name, dtype, category, order, modes):
    """jax.test_util.check_grads against finite differences (jax.lax.linalg's functions have
    no derivatives to compare with): reverse, forward, and second order in both modes."""
    from jax.test_util import check_grads

    mine, _ = jax_fns(jax, name)

    def check(sample):
        arrays, kw = sample
        check_grads(lambda *a: mine(*a, **kw), [jax.numpy.asarray(a) for a in arrays],
                    order=order, modes=modes)
    run_samples(name, category, dtype, jax_samples(name, dtype), check)
