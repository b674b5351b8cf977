"""Which machine a measurement ran on (CPU or GPU, libraries, their threads), and the
thread count every library is held to while one runs."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Iterator

import torch

PACKAGES = ("fasth", "torch", "numpy", "scipy", "jax", "jaxlib", "torch-householder", "geotorch",
            "nflows")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                    "OPENBLAS_L2_SIZE")


def version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(device: str, command: str) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {k: version(k) for k in PACKAGES},
        "env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
    }
    try:
        import threadpoolctl

        env["threadpools"] = [{k: i.get(k) for k in ("internal_api", "version", "architecture",
                                                     "num_threads", "filepath")}
                              for i in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def machine(env: dict) -> str:
    """One line: the device, CPU, threads, versions, BLAS thread pools, thread variables."""
    tp = "; ".join(f"{t['internal_api']} {t['version']} {t['architecture']} x{t['num_threads']}"
                   for t in env.get("threadpools", []))
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "not installed")
    return (f"{env.get('gpu', env['cpu'])} · {env['cpu_count']} CPUs, torch threads "
            f"{env['torch_threads']} · {versions}" + (f" · BLAS threadpools: {tp}" if tp else "")
            + (f" · env {env['env']}" if env["env"] else ""))


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Every library on ``n`` threads inside the block (torch, the BLAS that fasth and SciPy
    use, XLA when it starts inside), restored after; ``None``: each library's own default."""
    if not n:
        yield
        return
    import threadpoolctl

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpoolctl.threadpool_limits(n):
            if n == 1:  # read by XLA when JAX first starts its CPU client
                os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
            yield
    finally:
        torch.set_num_threads(before)
