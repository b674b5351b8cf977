"""``python -m fasth [command] [options]``; each command is a module with ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "check": ("fasth.selfcheck", "check fasth on a built-in random problem (the default)"),
    "bench": ("fasth.bench", "benchmarks: fasth beside the alternatives and the GEMM limit; --layers: layers in a training step"),
    "glow": ("fasth.demos.glow", "train or benchmark a Glow flow with an SVD 1x1 convolution"),
    "spectral": ("fasth.demos.spectral", "exact spectral normalisation demo"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        from .selfcheck import parser

        print("usage: python -m fasth [command] [options]\n\ncommands (python -m fasth COMMAND "
              "--help for a command's options):")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        options = parser().format_help().split("\n\n", 2)[-1]  # after the usage and description
        print("\nthe default command, check, takes:\n" + options.rstrip())
        return 0
    name = argv[0] if argv and not argv[0].startswith("-") else "check"
    rest = argv[1:] if argv and argv[0] == name else argv
    if name not in COMMANDS:
        print(f"fasth: unknown command {name!r}; try --help", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
