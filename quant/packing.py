r"""Dense bit packing of unsigned ``b``-bit codes (``1 <= b <= 8``) into bytes, and back.

Layout (a little-endian bit stream): code ``i`` occupies stream bits ``[i*b, (i+1)*b)``, its least
significant bit first, and stream bit ``k`` is bit ``k mod 8`` of byte ``floor(k / 8)``. ``n`` codes take
``ceil(n*b / 8)`` bytes; the unused high bits of the last byte are 0. Eight codes fill exactly ``b`` bytes,
which is how both directions are vectorized: a block of 8 codes is one ``8b``-bit integer (<= 56 bits for
``b <= 7``, so an int64 holds it; ``b = 8`` is the identity)::

    v = sum_j q_j * 2^(j*b)  (j = 0..7),        byte_k = floor(v / 2^(8k)) mod 256  (k = 0..b-1)

Symbols: ``q`` code; ``b`` bits per code; ``n`` number of codes; ``v`` one block of 8 codes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["pack_codes", "unpack_codes", "packed_nbytes"]


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r} must be an int in [1, 8] to pack into bytes")


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` codes of ``bits`` bits: ``ceil(n*b / 8)``."""
    _check_bits(bits)
    return math.ceil(n * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` (any shape, flattened row-major; values in ``[0, 2^b - 1]``) into a 1-D uint8
    tensor of :func:`packed_nbytes` bytes."""
    _check_bits(bits)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise ValueError(f"pack_codes needs an integer tensor, got {codes.dtype}")
    flat = codes.reshape(-1)
    n = flat.numel()
    if n and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for bits={bits}; got "
                         f"[{int(flat.min())}, {int(flat.max())}] (offset signed codes first)")
    if bits == 8:
        return flat.to(torch.uint8).clone()
    blocks = math.ceil(n / 8)
    q = torch.zeros(blocks * 8, dtype=torch.int64, device=flat.device)
    q[:n] = flat
    shifts = torch.arange(8, dtype=torch.int64, device=flat.device) * bits  # (8,)
    v = (q.view(blocks, 8) << shifts).sum(dim=1)  # (blocks, 8) -> (blocks,): disjoint bits, sum == or
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8  # (b,)
    out = ((v[:, None] >> byte_shifts) & 0xFF).to(torch.uint8)  # (blocks, b)
    return out.reshape(-1)[: packed_nbytes(n, bits)].contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` codes of a stream made by :func:`pack_codes` (1-D uint8 tensor of ``n`` codes)."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    need = packed_nbytes(n, bits)
    if packed.numel() < need:
        raise ValueError(f"{n} codes of {bits} bits need {need} bytes, got {packed.numel()}")
    if bits == 8:
        return packed[:n].clone()
    blocks = math.ceil(n / 8)
    p = torch.zeros(blocks * bits, dtype=torch.int64, device=packed.device)
    p[:need] = packed[:need]
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8  # (b,)
    v = (p.view(blocks, bits) << byte_shifts).sum(dim=1)  # (blocks, b) -> (blocks,)
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits  # (8,)
    q = (v[:, None] >> shifts) & (2**bits - 1)  # (blocks, 8)
    return q.reshape(-1)[:n].to(torch.uint8)
