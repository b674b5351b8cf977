"""Shared by the command-line tools (``python -m fasth ...``)."""

from __future__ import annotations

import argparse


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The description as written (paragraphs kept)."""


class _DefaultsFormatter(_Formatter, argparse.ArgumentDefaultsHelpFormatter):
    """... and every option's default after its help."""


def plain(doc: str) -> str:
    """A docstring as terminal text: reST's inline-literal double backticks dropped."""
    return doc.replace("``", "")


def parser(prog: str, doc: str, *, defaults: bool = False) -> argparse.ArgumentParser:
    """A command's parser: its docstring as plain text for the description; with
    ``defaults``, each option's help ends with its default."""
    return argparse.ArgumentParser(prog=prog, description=plain(doc),
                                   formatter_class=_DefaultsFormatter if defaults else _Formatter)


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
