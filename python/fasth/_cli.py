"""Shared by the command-line tools (``python -m fasth ...``)."""

from __future__ import annotations

import argparse


def check_device(parser: argparse.ArgumentParser, device: str | None, framework: str = "torch") -> None:
    """A ``--device`` this machine lacks is a usage error that names it, not a traceback from
    inside the framework."""
    if not device or device == "cpu":
        return
    if framework == "jax":
        import jax

        try:
            jax.devices(device)
        except RuntimeError as e:
            parser.error(f"--device {device}: JAX has no such backend here ({e})")
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        parser.error(f"--device {device}: {e}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= count:
        parser.error(f"--device {device}: torch sees no such CUDA device ({count} available)")
