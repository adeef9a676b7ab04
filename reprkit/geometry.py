"""Hidden states as direction and magnitude.

Shapes: hidden states are ``[batch, seq, hidden]`` (any leading dims work), masks ``[batch, seq]``
(bool or 0/1). All maths runs in float32 whatever the input dtype, and zero vectors give defined
values: magnitude 0, direction 0, cosine 0, never NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reprkit.lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:  # imported on first use: the command line's parser needs this module, not torch
    torch = lazy_module("torch")

EPS = 1e-6


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def magnitude(h: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last dim: ``[..., hidden] -> [...]``."""
    return torch.linalg.vector_norm(_f32(h), dim=-1)


def decompose(h: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``h`` into ``(magnitude [...], direction [..., hidden])`` with ``h = magnitude * direction``.

    A zero vector has magnitude 0 and direction 0.
    """
    h = _f32(h)
    mag = torch.linalg.vector_norm(h, dim=-1)
    return mag, h / mag.clamp_min(eps).unsqueeze(-1)


def compose(mag: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Inverse of ``decompose``: ``mag[..., None] * direction``."""
    return _f32(mag).unsqueeze(-1) * _f32(direction)


def unit(v: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``v / |v|`` over the last dim (0 for a zero vector)."""
    return decompose(v, eps)[1]


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Cosine similarity over the last dim: ``[..., hidden] x [..., hidden] -> [...]``.

    Computed as ``a.b / sqrt(|a|^2 |b|^2)`` so that ``cosine(h, h)`` is exactly 1 in float32.
    0 when either vector is zero.
    """
    a, b = _f32(a), _f32(b)
    dot = (a * b).sum(-1)
    denom = ((a * a).sum(-1) * (b * b).sum(-1)).clamp_min(eps * eps).sqrt()
    return dot / denom


def norm_ratio(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``|a| / |b|`` per vector (``|a| / eps`` when ``b`` is zero, so never NaN or inf for finite inputs)."""
    return magnitude(a) / magnitude(b).clamp_min(eps)


def angle(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Angle in radians between ``a`` and ``b`` per vector, in ``[0, pi]``."""
    return torch.arccos(cosine(a, b, eps).clamp(-1.0, 1.0))


def project(h: torch.Tensor, direction: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Component of ``h`` along ``direction`` (``[hidden]`` or broadcastable to ``h``)."""
    u = unit(direction, eps)
    h = _f32(h)
    return (h * u).sum(-1, keepdim=True) * u


def reject(h: torch.Tensor, direction: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``h`` with its component along ``direction`` removed (orthogonal to it)."""
    return _f32(h) - project(h, direction, eps)


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` mask -> a mask of each row's last 1 (padding on either side)."""
    return mask * (mask.cumsum(-1) == mask.sum(-1, keepdim=True))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only positions where ``mask`` is set.

    ``x`` is ``[batch, seq]`` or ``[batch, seq, hidden]`` with ``dim=1`` the token dim, ``mask`` is
    ``[batch, seq]``. A row whose mask is empty gives 0.
    """
    x = _f32(x)
    if mask is None:
        return x.mean(dim)
    m = mask.to(device=x.device, dtype=x.dtype)  # a mask follows the states it masks
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def without_sinks(h: torch.Tensor, mask: torch.Tensor, k: float = 3.0) -> torch.Tensor:
    """``mask`` with "attention-sink" tokens removed: norm above mean + k std of the row's masked norms.

    Sink tokens (often the first token) carry norms tens of times larger than the rest and dominate
    means and distances; excluding them keeps the statistics about the content tokens.
    """
    mask = mask.to(h.device).bool()
    norms = magnitude(h)
    m = mask.float()
    count = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = (norms * m).sum(1, keepdim=True) / count
    var = (((norms - mean) ** 2) * m).sum(1, keepdim=True) / count
    return mask & (norms <= mean + k * var.sqrt())


def similarity(
    policy: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample mean over masked tokens of the per-token cosine and norm ratio (policy / reference).

    Returns ``{"cosine": [batch], "norm_ratio": [batch]}``.
    """
    return {
        "cosine": masked_mean(cosine(policy, reference), mask),
        "norm_ratio": masked_mean(norm_ratio(policy, reference), mask),
    }
