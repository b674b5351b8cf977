"""The layers read like torch's: ``weight`` a tensor, parameters named for the Householder
vectors they hold, the dense factors as properties; old checkpoints load under the new names."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import fasth.torch as ft  # noqa: E402


def test_svd_linear_factors_and_weight_are_tensors():
    layer = ft.SVDLinear(7, 5).double()
    assert {n for n, _ in layer.named_parameters()} == {"U_reflectors", "S", "V_reflectors", "bias"}
    U, V, W = layer.U, layer.V, layer.weight
    assert (U.shape, V.shape, W.shape) == ((5, 5), (7, 5), (5, 7))
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(U.T @ U, eye)
    torch.testing.assert_close(V.T @ V, eye)
    W.sum().backward()  # differentiable in the reflector vectors
    assert layer.U_reflectors.grad is not None and layer.V_reflectors.grad is not None


def test_orthogonal_weight_is_a_tensor():
    layer = ft.Orthogonal(6, 3)
    assert [n for n, _ in layer.named_parameters()] == ["reflectors"]
    assert layer.weight.shape == (6, 6)


@pytest.mark.parametrize("make, old", [(lambda: ft.SVDLinear(4, 4), {"U": "U_reflectors", "V": "V_reflectors"}),
                                       (lambda: ft.SpectralLinear(4, 3), {"U": "U_reflectors", "V": "V_reflectors"}),
                                       (lambda: ft.Orthogonal(4), {"V": "reflectors"})])
def test_checkpoints_with_the_old_names_load(make, old):
    src, dst = make(), make()
    renamed = {v: k for k, v in old.items()}
    state = {renamed.get(k, k): v for k, v in src.state_dict().items()}
    assert set(old) <= set(state)
    dst.load_state_dict(state)
    torch.testing.assert_close(dst.weight, src.weight)
