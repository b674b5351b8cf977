"""Glow demo (python/fasth/demos/glow): every layer and the whole flow invert, their
log-determinants equal a brute-force Jacobian, the three 1x1 convolutions agree given the same
W, a short run lowers bits/dim (torch and JAX, through --resume), two-process DDP on CPU through torchrun."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fasth.demos.glow import parser  # noqa: E402
from fasth.demos.glow import torch_convs as tc  # noqa: E402
from fasth.demos.glow import torch_model as tm  # noqa: E402
from fasth.demos.glow import torch_trainer as tt  # noqa: E402
from fasth.demos.glow.data import load  # noqa: E402
from fasth.demos.glow.flow import random_orthogonal  # noqa: E402

torch.set_num_threads(1)


def _nonzero(module, seed=0):
    """Perturb the zero-initialised layers so that the flow is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tm.ZeroConv2d):
                m.conv.weight.copy_(0.1 * torch.randn(m.conv.weight.shape, generator=g))
                m.conv.bias.copy_(0.1 * torch.randn(m.conv.bias.shape, generator=g))
        if isinstance(module, tm.Glow):
            module.top.copy_(0.1 * torch.randn(module.top.shape, generator=g))
    return module


def _W0(c, seed=0):
    """A ``c x c`` float64 numpy matrix with distinct singular values 0.5 .. 2."""
    return random_orthogonal(c, np.random.default_rng(seed)) @ np.diag(np.linspace(0.5, 2.0, c))


def _layers(c=4):
    x = torch.randn(8, c, 2, 2)
    an = tm.ActNorm(c)
    an(x, x.new_zeros(8))  # data-dependent init
    out = {"actnorm": an, "coupling": _nonzero(tm.Coupling(c, 8))}
    for kind in tc.CONVS:
        out[f"conv-{kind}"] = tc.make_conv(kind, _W0(c))
    step = tm.FlowStep(c, 8, "svd", _W0(c, 1))
    step.actnorm(x, x.new_zeros(8))
    out["step"] = _nonzero(step)
    return out


@pytest.mark.parametrize("name", ["actnorm", "coupling", "conv-plain", "conv-lu", "conv-svd", "step"])
def test_torch_layer_inverts_and_logdet_is_the_jacobian(name):
    layer = _layers()[name].eval()
    x = torch.randn(3, 4, 2, 2)
    y, ld = layer(x, x.new_zeros(3))
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(layer(layer.inverse(y), x.new_zeros(3))[0], y, atol=1e-4, rtol=0)
    layer = layer.double()
    x1 = x[:1].double()
    J = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(x1.shape), v.new_zeros(1))[0].flatten(),
                                           x1.flatten())
    torch.testing.assert_close(layer(x1, x1.new_zeros(1))[1][0], torch.linalg.slogdet(J)[1],
                               atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("conv", tc.CONVS)
def test_torch_flow_inverts_and_logdet_is_the_jacobian(conv):
    torch.manual_seed(0)
    m = tm.Glow((1, 4, 4), levels=2, steps=2, width=8, conv=conv)
    m.initialize(torch.rand(16, 1, 4, 4) - 0.5)
    m = _nonzero(m).eval()
    x = torch.rand(5, 1, 4, 4) - 0.5
    zs, logdet, _ = m.encode(x)
    torch.testing.assert_close(m.inverse(zs), x, atol=1e-4, rtol=0)
    s = m.sample(5, 0.7, torch.Generator().manual_seed(1))
    torch.testing.assert_close(m.inverse(m.encode(s)[0]), s, atol=1e-4, rtol=0)
    md = m.double()
    x1 = x[:1].double()
    J = torch.autograd.functional.jacobian(
        lambda v: torch.cat([z.flatten() for z in md.encode(v.reshape(x1.shape))[0]]), x1.flatten())
    torch.testing.assert_close(md.encode(x1)[1][0], torch.linalg.slogdet(J)[1], atol=1e-8, rtol=1e-8)


def test_torch_conv_variants_agree_given_the_same_W():
    W0 = _W0(6)
    x = torch.randn(4, 6, 3, 3)
    ref = torch.nn.functional.conv2d(x, torch.as_tensor(W0).float()[:, :, None, None])
    for kind in tc.CONVS:
        c = tc.make_conv(kind, W0)
        y, ld = c(x, x.new_zeros(()))
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ld, torch.tensor(9 * np.linalg.slogdet(W0)[1], dtype=torch.float32),
                                   atol=1e-5, rtol=1e-5)
    # A level builds its convolutions' matrices in one batched call: the same as one by one.
    for kind in tc.CONVS:
        convs = [tc.make_conv(kind, _W0(6, seed)) for seed in range(3)]
        W, lad = tc.conv_weights(convs)
        for j, c in enumerate(convs):
            Wj, ladj = c.weight()
            torch.testing.assert_close(W[j], Wj, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(lad[j], ladj, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(tc.conv_inverse_weights(convs) @ W,
                                   torch.eye(6).expand(3, 6, 6), atol=1e-5, rtol=0)
    # Whole models built with one seed start from the same W and give the same density.
    x = torch.rand(8, 1, 8, 8) - 0.5
    lps = []
    for kind in tc.CONVS:
        torch.manual_seed(0)
        m = tm.Glow((1, 8, 8), 2, 2, 8, kind)
        m.initialize(x)
        lps.append(m(x))
    for lp in lps[1:]:
        torch.testing.assert_close(lp, lps[0], atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("per_step", [False, True])
def test_bench_times_every_cell(per_step):
    from fasth.demos.glow.bench import COLUMNS, run

    args = parser().parse_args(["--bench", "--device", "cpu", "--levels", "2", "--steps", "2",
                                "--width", "8", "--batch-size", "2", "--repeats", "1"]
                               + (["--per-step"] if per_step else []))
    med = run(args)
    cells = {(r, c, k) for r in ("model", "1x1 convs") for c in COLUMNS for k in tc.CONVS}
    assert set(med) == cells and all(v > 0 for v in med.values())


def test_nonfinite_output_is_located():
    m = tm.Glow((1, 8, 8), 2, 2, 8, "svd")
    m.initialize(torch.rand(8, 1, 8, 8) - 0.5)
    with torch.no_grad():
        m.flows[1][0].coupling.net[0].weight.fill_(float("nan"))
    assert "flows.1.0.coupling" in tt.locate_nonfinite(m, torch.rand(8, 1, 8, 8) - 0.5)


def test_jax_nonfinite_output_is_located():
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    import jax.numpy as jnp

    from fasth.demos.glow import jax_model as jm

    m = jm.Glow(jm.Config((1, 8, 8), 2, 2, 8, "svd"))
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 1)) - 0.5
    m.initialize(x)
    kernel = m.levels[1][0].coupling.conv1.kernel
    kernel[...] = jnp.full_like(kernel[...], jnp.nan)
    found: list[str] = []
    m.encode(x, check=found)
    assert found == ["level 1 step 0 coupling"]


def test_missing_data_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load("fashion-mnist", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load("cifar10", str(tmp_path))


def _idx(path, a: np.ndarray) -> None:
    """``a`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    raw = bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 5), ("t10k", 3))}
    (tmp_path / "sub").mkdir()
    for s, a in imgs.items():
        _idx(tmp_path / "sub" / (f"{s}-images-idx3-ubyte" + (".gz" if gz else "")), a)
        _idx(tmp_path / "sub" / f"{s}-labels-idx1-ubyte", np.zeros(len(a), np.uint8))
    d = load("fashion-mnist", str(tmp_path))
    assert (d.levels, d.shape, len(d.train), len(d.test)) == (256, (1, 32, 32), 5, 3)
    np.testing.assert_array_equal(d.train[:, 0, 2:30, 2:30], imgs["train"])  # padded by 2
    assert d.train[:, :, :2].max() == 0 and d.test[:, :, :, 30:].max() == 0
    np.testing.assert_array_equal(d.test[:, 0, 2:30, 2:30], imgs["t10k"])
    assert load("fashion-mnist", str(tmp_path), n_bits=5).train.max() < 32


def test_cifar10_reads_the_torchvision_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": batches[name], b"labels": [0, 1]}, f)
    d = load("cifar10", str(tmp_path))
    assert (d.levels, d.shape, len(d.train), len(d.test)) == (256, (3, 32, 32), 10, 2)
    np.testing.assert_array_equal(d.train[2], batches["data_batch_2"][0].reshape(3, 32, 32))
    np.testing.assert_array_equal(d.test.reshape(2, -1), batches["test_batch"])


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    d = load("fashion-mnist")  # the default path: where the package puts its files
    assert (d.shape, len(d.train), len(d.test)) == ((1, 32, 32), 60000, 10000)


def _args(tmp_path, framework, epochs, resume=False, conv="svd", width=16):
    a = parser().parse_args(["--framework", framework, "--conv", conv, "--epochs", str(epochs),
                             "--levels", "2", "--steps", "2", "--width", str(width), "--batch-size", "100",
                             "--lr", "3e-3", "--warmup", "5", "--out", str(tmp_path), "--quiet"]
                            + (["--resume"] if resume else []))
    return a


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_short_training_lowers_bits_per_dim_and_resumes(tmp_path, framework, capsys):
    if framework == "jax":
        pytest.importorskip("optax")
    from fasth.bench import record
    from fasth.demos.glow.train import train

    data = load("digits")
    first = train(_args(tmp_path, framework, 1), data)
    with pytest.raises(ValueError, match="width=16"):  # a checkpoint resumes only its own run
        train(_args(tmp_path, framework, 3, resume=True, width=8), data)
    resumed = train(_args(tmp_path, framework, 3, resume=True), data)
    assert resumed["test_bpd"] < first["test_bpd"] - 0.05
    assert resumed["png"] == str(tmp_path / f"glow-{framework}-svd.png") and Path(resumed["png"]).exists()
    out = capsys.readouterr().out
    assert "resumed from" in out and "epoch 3/3" in out and "epoch 2/3" in out and "final:" in out
    rows = record.read(tmp_path / record.ROWS)  # each epoch on disk as it ended, across the resume
    assert [r["epoch"] for r in rows["epoch"]] == [1, 2, 3] and len(rows["header"]) == 2
    assert rows["epoch"][-1]["test_bpd"] == pytest.approx(resumed["test_bpd"])


def test_jax_model_imports_no_torch():
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    code = ("import sys; import fasth.demos.glow.jax_model, fasth.demos.glow.train; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_learning_rate_warms_up_linearly():
    from fasth.demos.glow.train import lr_at

    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_ddp_two_processes_on_cpu_through_torchrun(tmp_path):
    """The command as a user runs it: torchrun starts two ranks of ``python -m fasth glow``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fasth", "glow", "--epochs", "1", "--levels", "2", "--steps", "2", "--width", "8",
           "--batch-size", "128", "--device", "cpu", "--out", str(tmp_path), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ck = torch.load(tmp_path / "glow-torch-svd.pt", weights_only=False)
    assert ck["epoch"] == 1 and ck["step"] == len(load("digits").train) // 256
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


# JAX --------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv", tc.CONVS)
def test_jax_flow_inverts_and_logdet_is_the_jacobian(conv):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import nnx

    from fasth.demos.glow import jax_model as jm

    model = jm.Glow(jm.Config((1, 4, 4), 2, 2, 8, conv), seed=1)
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 4, 4, 1)) - 0.5
    model.initialize(x)
    # Perturb every parameter but the 1x1 convolutions' (so the zero-initialised outputs do
    # not make the flow the identity).
    key = [jax.random.PRNGKey(2)]

    def perturb(path, leaf):
        if "conv" in path:
            return leaf
        key[0], k = jax.random.split(key[0])
        return leaf + 0.05 * jax.random.normal(k, leaf.shape)

    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(
        lambda p, a: perturb([getattr(e, "key", None) for e in p], a), nnx.to_pure_dict(params)))
    nnx.update(model, params)
    encode = nnx.jit(lambda m, v: m.encode(v))
    decode = nnx.jit(lambda m, zs: m.decode(zs))
    zs, logdet, _ = encode(model, x[:5])
    np.testing.assert_allclose(decode(model, zs), x[:5], atol=1e-4)
    s = nnx.jit(lambda m, k: m.decode(key=k, n=5, temperature=0.7))(model, jax.random.PRNGKey(3))
    np.testing.assert_allclose(decode(model, encode(model, s)[0]), s, atol=1e-4)
    x1 = x[:1]
    J = nnx.jit(lambda m, v: jax.jacfwd(lambda u: jnp.concatenate(
        [z.ravel() for z in m.encode(u.reshape(x1.shape))[0]]))(v))(model, x1.ravel())
    np.testing.assert_allclose(encode(model, x1)[1][0], jnp.linalg.slogdet(J)[1], atol=2e-3, rtol=1e-4)
    assert math.isfinite(float(logdet[0]))
    # The three variants agree given the same W.
    W0 = _W0(6)
    xs = np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32)
    layer = jm.make_conv(conv, W0)
    W, lad = layer.weight()
    np.testing.assert_allclose(W, W0, atol=1e-5)
    np.testing.assert_allclose(lad, np.linalg.slogdet(W0)[1], atol=1e-5)
    np.testing.assert_allclose(layer.inverse_weight() @ (W0 @ xs), xs, atol=1e-4)
    # LU's fixed parts are not parameters: the optimiser leaves them alone.
    assert all(name not in ("P", "sign_s") for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param))
               for name in path)
