import math

import pytest
import torch

from quant import pack_codes, packed_nbytes, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 13, 1001])
def test_roundtrip_is_exact_and_size_is_ceil_n_b_over_8(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n,), generator=g)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(n * bits / 8),) == (packed_nbytes(n, bits),)
    assert torch.equal(unpack_codes(packed, bits, n), codes.to(torch.uint8))


def test_layout_is_a_little_endian_bit_stream():
    # code i sits at stream bits [3i, 3i+3), LSB first; stream bit k is bit k % 8 of byte k // 8
    codes = torch.tensor([1, 2, 3, 4, 5])
    stream = "".join(format(int(c), "03b")[::-1] for c in codes)  # bit k of the stream, LSB of each code first
    stream += "0" * (-len(stream) % 8)
    expected = [int(stream[i:i + 8][::-1], 2) for i in range(0, len(stream), 8)]
    assert pack_codes(codes, 3).tolist() == expected
    assert pack_codes(torch.tensor([1, 2, 3, 0]), 4).tolist() == [0x21, 0x03]  # two 4-bit codes per byte, low nibble first


def test_multidimensional_codes_are_flattened_row_major():
    codes = torch.arange(24).reshape(2, 3, 4) % 32
    assert torch.equal(unpack_codes(pack_codes(codes, 5), 5, 24), codes.reshape(-1).to(torch.uint8))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_codes(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_codes(torch.tensor([-1]), 4)
    with pytest.raises(ValueError, match="bits=9"):
        pack_codes(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="integer"):
        pack_codes(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_codes(torch.zeros(1, dtype=torch.uint8), 4, 3)
