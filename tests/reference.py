"""An independent float64 / complex128 reference for fasth: a plain loop over single
reflectors.

H_i = I - 2 v_i v_i^H / |v_i|^2 (the identity when v_i = 0), U = H_1 ... H_k; for real V,
v^H = v^T. "transpose" is the conjugate transpose U^H (LAPACK's zunmqr 'C').
Gradients come from an explicit sequential backward over the reflectors (derived by hand
below, checked against finite differences in test_reference.py); nothing here calls fasth. For
complex arrays they follow torch's convention: for a real loss L, dL/dz = dL/dRe z +
i dL/dIm z, so that dL = Re sum(conj(dL/dz) dz) (JAX's gradient is its conjugate).
"""

from __future__ import annotations

import numpy as np


def tolerance(dtype, d: int) -> float:
    """Allowed max-abs error, relative to max(1, max |reference|), of a result computed in
    `dtype` with reductions of length up to d (d for U, U X and dX; dV also sums over the
    n columns and a shared V's batch). The one place tests take tolerances from."""
    eps = float(np.finfo(np.dtype(str(dtype).removeprefix("torch."))).eps)
    return 16 * eps * max(1.0, float(d))


def _f64(a) -> np.ndarray:
    """float64, or complex128 for complex input."""
    return np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64)


def _common(*arrays) -> list[np.ndarray]:
    """All float64, or all complex128 where any is complex."""
    c = any(np.iscomplexobj(a) for a in arrays)
    return [np.asarray(a, dtype=np.complex128 if c else np.float64) for a in arrays]


def _reflect(v: np.ndarray, A: np.ndarray) -> np.ndarray:
    """H(v) A for a single vector v (d,) and A (d, n)."""
    s = np.vdot(v, v).real
    if s == 0:
        return A.copy()
    return A - np.outer(v, (2.0 / s) * (v.conj() @ A))


def _order(k: int, transpose: bool) -> list[int]:
    # U X = H_1 (H_2 (... H_k X)): H_k acts first; U^T X = H_k ... H_1 X: H_1 acts first.
    return list(range(k)) if transpose else list(range(k - 1, -1, -1))


def _apply2(V: np.ndarray, X: np.ndarray, transpose: bool) -> np.ndarray:
    A = X.copy()
    for i in _order(V.shape[1], transpose):
        A = _reflect(V[:, i], A)
    return A


def _broadcast(V: np.ndarray, X: np.ndarray):
    """Pairs (V_b, X_b) over X's batch; an unbatched V, or a batch of one V, is shared by
    every entry."""
    bx = X.shape[:-2]
    shared = V.shape[:-2] != bx and V.size == np.prod(V.shape[-2:])
    Vb = np.broadcast_to(V.reshape(V.shape[-2:]), (*bx, *V.shape[-2:])) if shared else V
    assert Vb.shape[:-2] == bx, (V.shape, X.shape)
    B = int(np.prod(bx, dtype=np.int64))
    return Vb.reshape(B, *V.shape[-2:]), X.reshape(B, *X.shape[-2:])


def ref_apply(V, X, transpose: bool = False) -> np.ndarray:
    """U X (or U^H X), batched over leading dimensions of X (V batched alike, or shared)."""
    V, X = _common(V, X)
    V3, X3 = _broadcast(V, X)
    out = np.empty(X3.shape, X3.dtype)
    for b in range(X3.shape[0]):
        out[b] = _apply2(V3[b], X3[b], transpose)
    return out.reshape(X.shape)


def ref_matrix(V, thin: bool = False) -> np.ndarray:
    """U = H_1 ... H_k (d x d), or its first min(k, d) columns, batched over leading
    dimensions."""
    V = _f64(V)
    d, k = V.shape[-2:]
    n = min(k, d) if thin else d
    I = np.broadcast_to(np.eye(d, n, dtype=V.dtype), (*V.shape[:-2], d, n))
    return ref_apply(V, I)


def _reflect_grad(v: np.ndarray, A: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For B = H(v) A and G = dL/dB: (dL/dv, dL/dA).

    With s = v^H v (real) and w = A^H v:  B = A - (2/s) v w^H, so
      dL/dA = H(v) G   (H Hermitian)
      dL/dv = -(2/s) (G w + A G^H v) + (4/s^2) Re(v^H G w) v
    and 0 for v = 0, where H is the constant identity."""
    s = np.vdot(v, v).real
    if s == 0:
        return np.zeros_like(v), G.copy()
    w = A.conj().T @ v
    Gw = G @ w
    dv = -(2.0 / s) * (Gw + A @ (G.conj().T @ v)) + (4.0 / s**2) * np.vdot(v, Gw).real * v
    return dv, _reflect(v, G)


def _apply_grad2(V: np.ndarray, X: np.ndarray, G: np.ndarray,
                 transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    order = _order(V.shape[1], transpose)
    inputs = []
    A = X.copy()
    for i in order:
        inputs.append(A)
        A = _reflect(V[:, i], A)
    dV = np.zeros_like(V)
    for i, A_in in zip(reversed(order), reversed(inputs)):
        dV[:, i], G = _reflect_grad(V[:, i], A_in, G)
    return dV, G


def ref_apply_grad(V, X, G, transpose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dV, dL/dX) of out = ref_apply(V, X, transpose) for G = dL/dout; for a shared
    (unbatched) V, dL/dV is summed over the batch."""
    V, X, G = _common(V, X, G)
    V3, X3 = _broadcast(V, X)
    G3 = G.reshape(X3.shape)
    dV3, dX3 = np.zeros(V3.shape, V3.dtype), np.empty(X3.shape, X3.dtype)
    for b in range(X3.shape[0]):
        dV3[b], dX3[b] = _apply_grad2(V3[b], X3[b], G3[b], transpose)
    shared = V.shape[:-2] != X.shape[:-2]
    dV = (dV3.sum(axis=0) if shared else dV3).reshape(V.shape)
    return dV, dX3.reshape(X.shape)


def ref_matrix_grad(V, G, thin: bool = False) -> np.ndarray:
    """dL/dV of U = ref_matrix(V, thin) for G = dL/dU."""
    V, G = _common(V, G)
    d, k = V.shape[-2:]
    n = min(k, d) if thin else d
    I = np.broadcast_to(np.eye(d, n, dtype=V.dtype), (*V.shape[:-2], d, n))
    return ref_apply_grad(V, I, G)[0]


def finite_difference(f, x: np.ndarray, G: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d<G, f(x)>/dx by central differences in float64 (to check the gradients above); for
    complex x, of L = Re sum(conj(G) f(x)), as dL/dRe x + i dL/dIm x."""
    x = _f64(x).copy()
    out = np.zeros_like(x)
    steps = (1, 1j) if np.iscomplexobj(x) else (1,)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        for e in steps:
            x[idx] = old + h * e
            plus = np.sum(np.conj(G) * f(x)).real
            x[idx] = old - h * e
            minus = np.sum(np.conj(G) * f(x)).real
            out[idx] += e * (plus - minus) / (2 * h)
        x[idx] = old
    return out


# LAPACK's reflectors: H_i = I - tau_i v_i v_i^H, v_i the unit lower part of column i of A
# (ones on the diagonal, zeros above), any tau (H_i need not be orthogonal).

def _unit_lower(A: np.ndarray, k: int) -> np.ndarray:
    d = A.shape[-2]
    Y = np.tril(A[..., :k], -1)
    Y[..., range(min(d, k)), range(min(d, k))] = 1
    return Y


def ref_householder_product(A, tau) -> np.ndarray:
    """torch.linalg.householder_product: the first n columns of H_1 ... H_k, batched."""
    A, tau = _common(A, tau)
    d, n = A.shape[-2:]
    k = tau.shape[-1]
    Y = _unit_lower(A, k)
    out = np.empty(A.shape, A.dtype)
    for b in np.ndindex(A.shape[:-2]):
        Q = np.eye(d, n, dtype=A.dtype)
        for i in range(k - 1, -1, -1):
            v = Y[b][:, i]
            Q = Q - tau[b][i] * np.outer(v, v.conj() @ Q)
        out[b] = Q
    return out


def ref_ormqr(A, tau, C, left: bool = True, transpose: bool = False) -> np.ndarray:
    """torch.ormqr: op(Q) C or C op(Q), batched; op(Q) = Q^H with transpose."""
    A, tau, C = _common(A, tau, C)
    d = A.shape[-2]
    k = tau.shape[-1]
    Y = _unit_lower(A, k)
    out = np.empty(C.shape, C.dtype)
    for b in np.ndindex(C.shape[:-2]):
        Q = np.eye(d, dtype=A.dtype)
        for i in range(k - 1, -1, -1):
            v = Y[b][:, i]
            Q = Q - tau[b][i] * np.outer(v, v.conj() @ Q)
        Q = Q.conj().T if transpose else Q
        out[b] = Q @ C[b] if left else C[b] @ Q
    return out
