r"""Uniform (linear) quantization: symmetric per-tensor / per-channel scales, integer codes, fake-quant.

For a tensor ``x`` and ``b`` bits, symmetric signed quantization uses

    q_max = 2^(b-1) - 1,   s = max|x| / q_max   (over the whole tensor, or per slice along ``axis``)
    q = clamp(round(x / s), -q_max, q_max),     x_hat = s * q

and unsigned quantization (for non-negative tensors such as ReLU outputs) ``q_max = 2^b - 1``,
``q = clamp(round(x / s), 0, q_max)``. Rounding to nearest bounds the error inside the range by
``|x - x_hat| <= s / 2``. Fake quantization returns ``x_hat`` in float, which is exactly what integer
arithmetic with these codes followed by rescaling computes (up to float rounding of the accumulation).

Symbols: ``x`` real tensor; ``b`` bit width; ``s`` scale (step); ``q`` integer code; ``x_hat`` dequantized value.
"""

from __future__ import annotations

import torch

__all__ = ["qmax", "scale_for", "quantize", "dequantize", "fake_quantize"]


def qmax(bits: int, *, signed: bool = True) -> int:
    """Largest integer code: ``2^(b-1) - 1`` signed, ``2^b - 1`` unsigned."""
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits={bits!r} must be an int in [2, 16]")
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def scale_for(x: torch.Tensor, *, bits: int, axis: int | None = None, signed: bool = True) -> torch.Tensor:
    """``s = max|x| / q_max`` over the tensor (``axis=None``, a 0-d tensor) or per slice along ``axis``
    (shape broadcastable against ``x``). A zero range gets scale 1 (every code is then 0)."""
    if not signed and bool((x < 0).any()):
        raise ValueError("unsigned quantization needs a non-negative tensor; use signed=True")
    if axis is None:
        amax = x.detach().abs().max()
    else:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        amax = x.detach().abs().amax(dim=dims, keepdim=True)
    s = amax / qmax(bits, signed=signed)
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize(x: torch.Tensor, scale: torch.Tensor, *, bits: int, signed: bool = True) -> torch.Tensor:
    """Integer codes ``q`` (int32 tensor) of ``x`` at ``scale``."""
    q = qmax(bits, signed=signed)
    return torch.clamp(torch.round(x / scale), -q if signed else 0, q).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * scale


def fake_quantize(x: torch.Tensor, *, bits: int, axis: int | None = None, signed: bool = True,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x_hat = s * q(x)``; the scale is computed from ``x`` unless given (e.g. calibrated)."""
    s = scale_for(x, bits=bits, axis=axis, signed=signed) if scale is None else scale
    return dequantize(quantize(x, s, bits=bits, signed=signed), s)
