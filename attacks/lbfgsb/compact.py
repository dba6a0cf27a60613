"""The compact L-BFGS matrix of the batched L-BFGS-B solver (scipy's ``formt`` / ``bmv``), in the
history's own coordinates.

The package works in those coordinates wherever it touches the history: the 2m columns of
Wₙ = [s₀, y₀, s₁, y₁, …] (W reshaped to [C, 2m, n], by ring position). B = θI − W̃MW̃ᵀ with
W̃ = [Y, θS] is B = θI − Wₙ Mₙ Wₙᵀ with Mₙ = T M Tᵀ (W̃ = Wₙ T: T takes y_j to column j and θ·s_j
to column m + j), so products with the history need no reordering or scaling.
"""

from __future__ import annotations

import torch
from torch import Tensor


def middle_matrix(SY: Tensor, SS: Tensor, stamp: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The middle matrix of the compact L-BFGS form, B = θI − Wₙ Mₙ Wₙᵀ, and its inverse, in
    the history's coordinates (s₀, y₀, s₁, y₁, …), for pairs stored by ring position.

    In scipy's coordinates W̃ = [Y, θS], M⁻¹ = [[−D, Lᵀ], [L, θSᵀS]] with D = diag(sᵢᵀyᵢ) and L
    the products sᵢᵀyⱼ of pairs i newer than j (``stamp``: insertion order; −1 marks an empty
    position, decoupled with a unit diagonal). M comes from the Cholesky factor J of
    T = θSᵀS + LD⁻¹Lᵀ as in scipy's ``formt`` / ``bmv``: with X = J⁻¹LD⁻¹,
    M = [[−D⁻¹ + XᵀX, XᵀJ⁻¹], [J⁻ᵀX, J⁻ᵀJ⁻¹]].

    ``SY[i, j]`` = sᵢᵀyⱼ, ``SS[i, j]`` = sᵢᵀsⱼ, float64 ``[A, m, m]``; ``theta`` ``[A]``.
    Returns (Mₙ, Mₙ⁻¹, ok) ``[A, 2m, 2m]``, Mₙ zero on empty positions; ``ok`` is False where T
    is not positive definite (scipy then clears the memory).
    """
    A, m, _ = SY.shape
    valid = stamp >= 0
    vf = valid.to(SY.dtype)
    pair = vf[:, :, None] * vf[:, None, :]
    D = torch.diagonal(SY, dim1=1, dim2=2) * vf + (1.0 - vf)
    L = SY * (pair * (stamp[:, :, None] > stamp[:, None, :]).to(SY.dtype))
    th = theta[:, None, None]
    SSm = SS * pair + torch.diag_embed(1.0 - vf)
    LD = L / D[:, None, :]
    J, info = torch.linalg.cholesky_ex(th * SSm + LD @ L.transpose(1, 2))
    ok = info == 0
    J = torch.where(ok[:, None, None], J, torch.eye(m, dtype=J.dtype, device=J.device))
    eye = torch.eye(m, dtype=SY.dtype, device=SY.device).expand(A, m, m)
    sol = torch.linalg.solve_triangular(J, torch.cat([LD, eye], dim=2), upper=False)
    X, Jinv = sol[:, :, :m], sol[:, :, m:]
    M_yy = -torch.diag_embed(1.0 / D) + X.transpose(1, 2) @ X      # blocks of M on W̃ = [Y, θS]
    M_ys = X.transpose(1, 2) @ Jinv
    M_ss = Jinv.transpose(1, 2) @ Jinv
    # to the history's coordinates: y_j is W̃'s column j, s_j is column m + j scaled by θ
    Mn = torch.empty(A, m, 2, m, 2, dtype=SY.dtype, device=SY.device)
    Mn[:, :, 1, :, 1] = M_yy
    Mn[:, :, 1, :, 0] = th * M_ys
    Mn[:, :, 0, :, 1] = th * M_ys.transpose(1, 2)
    Mn[:, :, 0, :, 0] = th * th * M_ss
    Mn = Mn * (vf[:, :, None, None, None] * vf[:, None, None, :, None])
    Minv = torch.empty_like(Mn)
    Minv[:, :, 1, :, 1] = -torch.diag_embed(D)
    Minv[:, :, 1, :, 0] = L.transpose(1, 2) / th
    Minv[:, :, 0, :, 1] = L / th
    Minv[:, :, 0, :, 0] = SSm / th
    return Mn.reshape(A, 2 * m, 2 * m), Minv.reshape(A, 2 * m, 2 * m), ok
