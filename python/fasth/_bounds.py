"""The bounded parametrisations of singular values shared by fasth.torch and fasth.jax."""

MODES = ("normalize", "sigmoid", "clip")


def check_bound(bound: float, mode: str, lo: float) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if mode == "clip" and not 0 <= lo <= bound:
        raise ValueError(f"lo must be in [0, bound = {bound}], got {lo}")
