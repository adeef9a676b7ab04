"""Built-in edits for ``Trace``/``TraceDict``/``capture(edit_output=...)``.

Each function returns an ``edit(hidden, name) -> hidden``. ``mask`` (``[batch, seq]``) restricts
the edit to the positions where it is set; positions outside it keep their exact values. Edits keep
the hidden states' dtype.

>>> with capture(model, 10, edit_output=add_vector(v, scale=4.0)):
...     model.generate(**inputs, max_new_tokens=20)
"""

from __future__ import annotations

import torch

from .geometry import decompose, project, unit


def _masked(fn, mask: torch.Tensor | None):
    def edit(h: torch.Tensor, name: str = "") -> torch.Tensor:
        new = fn(h).to(h.dtype)
        if mask is None:
            return new
        if mask.shape != h.shape[:-1]:
            raise ValueError(
                f"edit mask has shape {tuple(mask.shape)} but the hidden states are "
                f"{tuple(h.shape)}; pass a [batch, seq] mask for this input (or mask=None during generate)"
            )
        return torch.where(mask.to(h.device).bool().unsqueeze(-1), new, h)  # the mask follows the states

    return edit


def add_vector(vector: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None):
    """``h + scale * vector`` (a steering vector, ``[hidden]``)."""
    return _masked(lambda h: h + scale * vector.to(h.device, h.dtype), mask)


def ablate(direction: torch.Tensor, mask: torch.Tensor | None = None):
    """Project ``direction`` out of ``h``: afterwards ``h . direction == 0``."""
    return _masked(lambda h: h - project(h, direction.to(h.device)), mask)


def set_magnitude(norm: float | torch.Tensor, mask: torch.Tensor | None = None):
    """Keep each token's direction, set its norm to ``norm`` (scalar or ``[batch, seq]``)."""

    def fn(h):
        _, d = decompose(h)
        n = torch.as_tensor(norm, dtype=torch.float32, device=h.device)
        return d * (n.unsqueeze(-1) if n.dim() else n)

    return _masked(fn, mask)


def scale_magnitude(factor: float, mask: torch.Tensor | None = None):
    """Multiply each token's norm by ``factor``, direction unchanged."""
    return _masked(lambda h: h * factor, mask)


def steer_direction(vector: torch.Tensor, scale: float = 1.0, mask: torch.Tensor | None = None):
    """Direction-only steering: turn ``h`` toward ``vector`` while keeping each token's norm.

    ``h' = |h| * unit(unit(h) + scale * unit(vector))``.
    """

    def fn(h):
        mag, d = decompose(h)
        return mag.unsqueeze(-1) * unit(d + scale * unit(vector.to(h.device)))

    return _masked(fn, mask)


def chain(*edits):
    """Apply several edits in order."""

    def edit(h, name=""):
        for e in edits:
            h = e(h, name)
        return h

    return edit


__all__ = ["add_vector", "ablate", "set_magnitude", "scale_magnitude", "steer_direction", "chain"]
