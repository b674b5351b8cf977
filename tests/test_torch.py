"""fasth.torch: autograd and the custom ops (gradcheck, opcheck, torch.func, torch.compile),
Reflectors and the CPU BLAS, on every device the `device` fixture offers (CUDA cases skip
cleanly without a GPU). The layers: test_torch_layers.py; drop-in behaviour:
test_torch_drop_ins.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fasth
import fasth.torch as ft
from reference import ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad, tolerance


def sample_inputs(device: str, dtype=torch.float64):
    """(V, X) pairs covering k < d, k = d, batched, shared V and odd sizes."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    return [
        (r(6, 4), r(6, 5)),
        (r(7, 7), r(7, 3)),
        (r(2, 5, 3), r(2, 5, 4)),
        (r(5, 5), r(3, 5, 2)),
        (r(9, 9), r(9, 40)),  # n >> d: the materialised strategy under "auto"
    ]


@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
@pytest.mark.parametrize("transpose", [False, True])
def test_apply_gradcheck(device, strategy, transpose):
    for V, X in sample_inputs(device):
        V.requires_grad_(), X.requires_grad_()
        fn = lambda V, X: ft.apply(V, X, transpose, strategy=strategy, block=2)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (V, X))


@pytest.mark.parametrize("thin", [False, True])
def test_matrix_gradcheck(device, thin):
    for V, _ in sample_inputs(device):
        V.requires_grad_()
        assert torch.autograd.gradcheck(lambda V: ft.matrix(V, thin, block=3), (V,))


@pytest.mark.parametrize("transpose", [False, True])
def test_gradient_of_input_gradient(device, transpose):
    # A gradient penalty differentiates dL/dX, in V and X: gradcheck the map (V, X) -> dL/dX.
    def input_grad(V, X):
        y = ft.apply(V, X, transpose, block=2)
        (dX,) = torch.autograd.grad(torch.tanh(y).sum(), X, create_graph=True)
        return dX

    for V, X in sample_inputs(device)[:4]:
        V.requires_grad_(), X.requires_grad_()
        assert torch.autograd.gradcheck(input_grad, (V, X))
        (once,) = torch.autograd.grad(torch.tanh(ft.apply(V, X, transpose, block=2)).sum(), X)
        torch.testing.assert_close(input_grad(V, X), once)  # the same dX as without the graph
    # A layer's gradient penalty (applied: 66 features, 3 rows) equals that of its dense
    # weight (whose route is matrix's first-order backward), in every parameter.
    torch.manual_seed(0)
    layer = ft.SVDLinear(66, 66).double().to(device)
    x = torch.randn(3, 66, dtype=torch.float64, device=device, requires_grad=True)

    def penalty(f):
        (g,) = torch.autograd.grad(torch.tanh(f(x)).sum(), x, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(layer.parameters()))

    for got, want in zip(penalty(layer), penalty(lambda x: x @ layer.weight.T + layer.bias)):
        torch.testing.assert_close(got, want)
    # dV has no second derivative: differentiating it again says so.
    V, X = (t.requires_grad_() for t in sample_inputs(device)[0])
    (dV,) = torch.autograd.grad(ft.apply(V, X).square().sum(), V, create_graph=True)
    with pytest.raises(RuntimeError, match="gradient of V cannot be differentiated again"):
        dV.sum().backward()


def test_apply_matches_reference(device):
    for V, X in sample_inputs(device, torch.float32):
        for transpose in (False, True):
            out = ft.apply(V, X, transpose).cpu().double().numpy()
            ref = ref_apply(V.cpu().numpy(), X.cpu().numpy(), transpose)
            np.testing.assert_allclose(out, ref, atol=tolerance("float32", V.shape[-2]))


def test_gradients_match_reference(device):
    V, X = sample_inputs(device)[3]  # shared V: its gradient sums over the batch
    V.requires_grad_(), X.requires_grad_()
    G = torch.randn_like(X)
    (ft.apply(V, X, True) * G).sum().backward()
    dV, dX = ref_apply_grad(*(t.detach().cpu().numpy() for t in (V, X, G)), transpose=True)
    np.testing.assert_allclose(V.grad.cpu().numpy(), dV, atol=1e-10)
    np.testing.assert_allclose(X.grad.cpu().numpy(), dX, atol=1e-10)


@pytest.mark.parametrize("transpose", [False, True])
def test_reflectors_reuse_factors(device, transpose):
    """Reflectors(V).apply is apply(V, .) in values and gradients (gradcheck) over two uses,
    whose gradients sum; the later applies of a shape build no factors (fewer backend calls)."""
    import fasth

    for V, X in sample_inputs(device):
        V.requires_grad_(), X.requires_grad_()

        def twice(V, X):
            R = ft.Reflectors(V, block=2)
            return R.apply(torch.tanh(R.apply(X, transpose)), transpose)

        assert torch.autograd.gradcheck(twice, (V, X))
        ref = ft.apply(V, torch.tanh(ft.apply(V, X, transpose, block=2)), transpose, block=2)
        torch.testing.assert_close(twice(V, X), ref, rtol=0, atol=1e-12)
    V, X = (t.float() for t in sample_inputs(device)[1])
    R = ft.Reflectors(V)
    with fasth.profile() as first:
        R.apply(X, transpose)
    with fasth.profile() as again:
        out = R.apply(X, transpose)
    assert again.calls < first.calls and "larft" not in again.by_op, (first, again)
    torch.testing.assert_close(out, ft.apply(V, X, transpose))


def test_reflectors_see_in_place_changes_of_v(device):
    """An optimizer step on V between applies: the next apply uses the new V, never stale
    factors; under torch.func the applies are apply's."""
    V, X = sample_inputs(device)[1]
    V = torch.nn.Parameter(V)
    R = ft.Reflectors(V)
    R.apply(X).square().sum().backward()
    opt = torch.optim.SGD([V], lr=0.5)
    opt.step()
    torch.testing.assert_close(R.apply(X), ft.apply(V.detach(), X))
    Xs = torch.randn(3, *X.shape, dtype=X.dtype, device=device)
    torch.testing.assert_close(torch.func.vmap(R.apply)(Xs), ft.apply(V.detach(), Xs))


@pytest.mark.parametrize("blas", ["scipy", "torch-loop", "torch"])
def test_every_cpu_blas_matches_reference(blas):
    """fasth's CPU products run on SciPy's BLAS (plain ``import fasth``) or on libtorch's
    (installed by ``fasth.torch``), whose batches go to MKL's ``?gemm_batch`` where it has one
    ("torch-loop": one product a call). Each matches the reference, on a batch of 70 small
    entries (two batch calls of at most 64) and on a few entries large enough for threads."""
    from fasth import _engine, _native
    from fasth.torch import _plans

    g = torch.Generator().manual_seed(1)
    if blas != "scipy" and _plans.torch_blas() is None:
        pytest.skip("this torch build exports no BLAS")
    try:
        _engine.use_blas_for("torch", _native.scipy_blas() if blas == "scipy"
                             else _plans.torch_blas(gemm_batch=blas == "torch"))
        for B, d, k, n in ((70, 5, 4, 3), (3, 96, 96, 64)):
            V, X, G = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                       for s in ((B, d, k), (B, d, n), (B, d, n)))
            (ft.apply(V, X) * G).sum().backward()
            dV, dX = ref_apply_grad(*(t.detach().numpy() for t in (V, X, G)))
            np.testing.assert_allclose(V.grad.numpy(), dV, atol=1e-9)
            np.testing.assert_allclose(X.grad.numpy(), dX, atol=1e-9)
            V.grad = None
            U = ft.matrix(V)
            (U * G[..., :1]).sum().backward()
            GU = np.broadcast_to(G.detach()[..., :1].numpy(), U.shape)
            np.testing.assert_allclose(U.detach().numpy(), ref_matrix(V.detach().numpy()), atol=1e-10)
            np.testing.assert_allclose(V.grad.numpy(), ref_matrix_grad(V.detach().numpy(), GU), atol=1e-9)
    finally:
        _engine.use_blas_for("torch", _plans.torch_blas)


APPLY, MATRIX, HH = 0, 1, 0  # the core's Op and Kind


@pytest.mark.parametrize("args", [
    lambda V, X: (V, None, X, APPLY, HH, False, False, 0, "auto", False),
    lambda V, X: (V, None, X, APPLY, HH, False, False, 2, "blockwise", False, True),  # a tape
    lambda V, X: (V, None, X, APPLY, HH, True, False, 2, "materialize", False),
    lambda V, X: (V, None, None, MATRIX, HH, False, True, 0, "auto", False),
])
def test_opcheck(device, args):
    for V, X in sample_inputs(device, torch.float32)[:4]:
        torch.library.opcheck(torch.ops.fasth.forward.default, args(V, X))


def test_backward_op_opcheck(device):
    V, X = sample_inputs(device, torch.float32)[2]
    out, f, _ = torch.ops.fasth.forward(V, None, X, APPLY, HH, False, False, 0, "auto", False)
    torch.library.opcheck(torch.ops.fasth.backward.default,
                          (V, None, out, f, torch.randn_like(out), APPLY, HH, False, False, 0,
                           "auto", False, True))
    out, f, tape = torch.ops.fasth.forward(V, None, X, APPLY, HH, False, False, 2, "blockwise",
                                           False, True)
    assert tape.numel() > 0
    torch.library.opcheck(torch.ops.fasth.backward.default,
                          (V, None, out, f, torch.randn_like(out), APPLY, HH, False, False, 2,
                           "blockwise", False, True, tape))
    U, f, _ = torch.ops.fasth.forward(V, None, None, MATRIX, HH, False, False, 0, "auto", False)
    torch.library.opcheck(torch.ops.fasth.backward.default,
                          (V, None, U, f, torch.randn_like(U), MATRIX, HH, False, False, 0,
                           "auto", False, False))


def test_torch_func_transforms(device):
    """vmap (batched and shared V), grad, per-example gradients (vmap of grad) and jacrev give
    what the same computations give through autograd and explicit batches."""
    from torch.func import grad, jacrev, vmap

    V, X = sample_inputs(device)[0]  # d = 6, k = 4, n = 5
    Vb, Xb = torch.stack([V, 2 * V, -V]), torch.stack([X, X.flip(-1), 3 * X])
    close = lambda a, b: torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)  # noqa: E731
    for transpose in (False, True):
        f = lambda V, X: ft.apply(V, X, transpose)  # noqa: E731
        close(vmap(f)(Vb, Xb), f(Vb, Xb))
        close(vmap(f, in_dims=(None, 0))(V, Xb), f(V, Xb))
        close(vmap(f, in_dims=(0, None))(Vb, X), f(Vb, X.expand(3, -1, -1)))
        loss = lambda V, X: (f(V, X) ** 2 * X.sum()).sum()  # noqa: E731
        Va, Xa = V.clone().requires_grad_(), X.clone().requires_grad_()
        loss(Va, Xa).backward()
        gV, gX = grad(loss, argnums=(0, 1))(V, X)
        close(gV, Va.grad), close(gX, Xa.grad)
        per_example = vmap(grad(loss), in_dims=(None, 0))(V, Xb)  # a dV per example
        close(per_example, torch.stack([grad(loss)(V, x) for x in Xb]))
    close(vmap(ft.matrix)(Vb), ft.matrix(Vb))
    close(jacrev(ft.matrix)(V), torch.autograd.functional.jacobian(ft.matrix, V))
    G = torch.randn(3, 6, 6, dtype=V.dtype, device=device)
    per_example = vmap(grad(lambda V, g: (ft.matrix(V) * g).sum()), in_dims=(None, 0))(V, G)
    close(per_example, torch.stack([grad(lambda V: (ft.matrix(V) * g).sum())(V) for g in G]))
    # Per-sample gradients of a layer, through functional_call.
    layer = ft.SVDLinear(6, 6).double().to(device)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    xs = X.T.contiguous()  # 5 samples of 6 features
    sample_loss = lambda p, x: (torch.func.functional_call(layer, p, (x[None],)) ** 2).sum()  # noqa: E731
    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))(params, xs)
    for i, x in enumerate(xs):
        layer.zero_grad()
        sample_loss(dict(layer.named_parameters()), x).backward()
        for name, p in layer.named_parameters():
            close(per_sample[name][i], p.grad)


def test_compile_training_step(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(ft.Orthogonal(16), torch.nn.Tanh(), ft.SVDLinear(16, 4)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 16, device=device), torch.randn(32, 4, device=device)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    eager_first = torch.nn.functional.mse_loss(model(x), y).item()
    compiled = torch.compile(step, fullgraph=False)
    losses = [compiled().item() for _ in range(3)]
    opt.step()
    assert losses[0] == pytest.approx(eager_first, rel=1e-5)
    loss_fn = torch.compile(lambda V, X: ft.apply(V, X).square().sum(), fullgraph=True)
    V = torch.randn(8, 8, device=device, requires_grad=True)
    loss_fn(V, torch.randn(8, 3, device=device)).backward()
    assert torch.isfinite(V.grad).all()


def test_householder_product_rows_far_apart(device):
    """LAPACK's reflectors with A's rows 256 elements apart (k = 256): Y and the buffers laid
    out as Y take padded rows; values and gradients are torch's."""
    torch.manual_seed(0)
    d, k = 262, 256
    A = torch.randn(d, k, dtype=torch.float64, device=device)
    tau = 2 / (1 + A.tril(-1).square().sum(0))  # orthogonal reflectors: no growth over 256
    A, tau = A.requires_grad_(), tau.requires_grad_()
    G = torch.randn(d, k, dtype=torch.float64, device=device)
    got = torch.autograd.grad(ft.householder_product(A, tau), (A, tau), G)
    want = torch.autograd.grad(torch.linalg.householder_product(A, tau), (A, tau), G)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_per_example_gradients_of_a_shared_v(device):
    """vmap of a gradient with V shared by a batch that is larger work than one example: the
    forward (V shared) and the per-example backward pick the same blocks."""
    torch.manual_seed(0)
    V = torch.randn(64, 64, dtype=torch.float64, device=device)
    Xs = torch.randn(16, 64, 5, dtype=torch.float64, device=device)
    loss = lambda V, x: ft.apply(V, x).square().sum()  # noqa: E731
    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(V, Xs)
    for x, g in zip(Xs, per):
        torch.testing.assert_close(g, torch.func.grad(loss)(V, x))


def test_batched_backward_of_an_eager_graph(device):
    """A vmap over the backward of a graph built eagerly (gradcheck's batched gradients,
    autograd.grad's is_grads_batched), where the forward kept a tape or its output: the
    gradients of each cotangent in turn."""
    V, X = (t.requires_grad_() for t in sample_inputs(device)[2])  # V, X: (2, 5, 3), (2, 5, 4)
    for fn, args in ((lambda V, X: ft.apply(V, X, block=2, strategy="blockwise"), (V, X)),
                     (lambda V, X: ft.apply(V, X, True, strategy="materialize"), (V, X)),
                     (lambda V: ft.matrix(V, block=2), (V,)),
                     (lambda V: ft.matrix(V, thin=True), (V,))):
        assert torch.autograd.gradcheck(fn, args, check_batched_grad=True)
        out = fn(*args)
        G = torch.randn(3, *out.shape, dtype=out.dtype, device=device)
        got = torch.autograd.grad(out, args, G, is_grads_batched=True, retain_graph=True)
        for i, g in enumerate(G):
            for a, b in zip(got, torch.autograd.grad(out, args, g, retain_graph=True)):
                torch.testing.assert_close(a[i], b)


def test_vmap_over_x_of_a_batched_v(device):
    """vmap over X alone, V with batch dimensions of its own (an empty batch among them):
    V is repeated for each example, through the Function and the custom op alike."""
    for b in (2, 0):
        V, X = torch.randn(b, 6, 4, device=device), torch.randn(3, b, 6, 5, device=device)
        want = torch.stack([ft.apply(V, x) for x in X])
        torch.testing.assert_close(torch.func.vmap(lambda x: ft.apply(V, x))(X), want)
        op = lambda x: torch.ops.fasth.forward(V, None, x, APPLY, HH, False, False, 0, "auto", False)[0]  # noqa: E731
        torch.testing.assert_close(torch.func.vmap(op)(X), want)


def test_per_example_gradients_of_a_batched_column_major_a(device):
    """vmap over the cotangent alone, A batched and column-major (geqrf's layout): the
    backward repeats A for each example in a copy that keeps its layout, and so reads the
    factors that the forward made from it."""
    A = torch.randn(2, 4, 6, dtype=torch.float64, device=device).mT
    tau = torch.rand(2, 4, dtype=torch.float64, device=device)
    C = torch.randn(2, 6, 3, dtype=torch.float64, device=device)
    for fn, args in ((ft.householder_product, (A, tau)), (ft.ormqr, (A, tau, C))):
        G = torch.randn(3, *fn(*args).shape, dtype=torch.float64, device=device)

        def vjp(g):
            return torch.func.vjp(fn, *args)[1](g)
        for got, want in zip(torch.func.vmap(vjp)(G), zip(*[vjp(g) for g in G])):
            torch.testing.assert_close(got, torch.stack(want))


def test_compile_backward_reads_the_tape(device):
    """Under torch.compile a forward that the graph differentiates keeps a tape, as in eager
    mode: the compiled backward makes the eager backward's calls and gives its gradients."""
    torch.manual_seed(0)
    V = torch.randn(24, 20, device=device, dtype=torch.float64, requires_grad=True)
    X = torch.randn(24, 5, device=device, dtype=torch.float64, requires_grad=True)
    loss = lambda V, X: ft.apply(V, X, block=4, strategy="blockwise").square().sum()  # noqa: E731
    compiled = torch.compile(loss, fullgraph=True)
    compiled(V, X)
    grads, calls = [], []
    for fn in (loss, compiled):
        y = fn(V, X)
        with fasth.profile() as p:
            grads.append(torch.autograd.grad(y, (V, X)))
        calls.append(p.by_op)
    assert calls[0] == calls[1]
    for e, c in zip(*grads):
        torch.testing.assert_close(c, e)


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(device, low):
    torch.manual_seed(0)
    V = torch.randn(8, 8, device=device, requires_grad=True)
    xl = torch.randn(8, 5, device=device).to(low).requires_grad_()
    with torch.autocast(device, dtype=low):
        y = ft.apply(V, xl)
        U = ft.matrix(V.to(low))
        y_op = torch.ops.fasth.forward(V, None, xl, APPLY, HH, False, False, 0, "auto", False)[0]
        y_compiled = torch.compile(lambda V, X: ft.apply(V, X), fullgraph=True)(V, xl)
    assert y.dtype == U.dtype == y_op.dtype == y_compiled.dtype == torch.float32
    want = ft.apply(V, xl.float())
    for got in (y, y_op, y_compiled):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(U, ft.matrix(V.to(low).float()))
    y.sum().backward()
    assert xl.grad.dtype == low and V.grad.dtype == torch.float32
    with pytest.raises(TypeError, match="one dtype"):  # mixed, outside autocast: refused as matmul does
        ft.apply(V, xl)

    # Layers behind a low-precision activation, forward and backward.
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), ft.Orthogonal(8), ft.SVDLinear(8, 4)).to(device)
    with torch.autocast(device, dtype=low):
        out = model(torch.randn(3, 8, device=device))
    out.float().square().sum().backward()
    for p in model.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
