import dataclasses

import pytest
import torch

from quant import Granularity, QuantSpec, fake_quant, fake_quantize, quantize_tensor


def _err(w, spec):
    return float((fake_quant(w, spec) - w).pow(2).mean())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_error_is_at_most_half_a_step_and_codes_are_in_range(bits, symmetric, granularity):
    torch.manual_seed(bits)
    w = torch.randn(12, 70) * torch.rand(12, 1) * 3 + (0 if symmetric else 0.5)
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity, group_size=32)  # 70 = 32+32+6
    qt = quantize_tensor(w, spec)
    rows, groups, g = spec.groups(w.shape)
    assert qt.scale.shape == (rows, groups) and qt.codes.shape == w.shape and qt.codes.dtype == torch.int32
    if symmetric:
        assert qt.zero_point is None and int(qt.codes.abs().max()) <= 2 ** (bits - 1) - 1
    else:
        assert qt.zero_point.shape == (rows, groups) and 0 <= int(qt.codes.min()) and int(qt.codes.max()) <= 2**bits - 1
    # the scale of each element's group, expanded to w's shape
    s = qt.scale.repeat_interleave(g, dim=1)[:, :70] if granularity != "tensor" else qt.scale.expand(12, 70)
    err = (qt.dequantize() - w).abs()
    assert bool((err <= s / 2 * (1 + 1e-5) + 1e-7).all())  # round to nearest; 1e-5 relative: float32 division


def test_symmetric_channel_spec_matches_uniform_per_channel():
    w = torch.randn(8, 16)
    torch.testing.assert_close(fake_quant(w, QuantSpec(bits=4)), fake_quantize(w, bits=4, axis=0), rtol=0, atol=0)
    torch.testing.assert_close(fake_quant(w, QuantSpec(bits=4, granularity="tensor")), fake_quantize(w, bits=4),
                               rtol=0, atol=0)


def test_finer_granularity_wins_on_outlier_rows_and_groups():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.02
    w[::8] *= 20  # outlier rows: per-tensor scale is ruined, per-channel recovers
    w[:, 17] *= 30  # an outlier input column: ruins its row's channel scale, only its group pays
    e_t, e_c, e_g = (_err(w, QuantSpec(bits=4, granularity=gr, group_size=32)) for gr in ("tensor", "channel", "group"))
    assert e_g < 0.7 * e_c and e_c < 0.7 * e_t


def test_asymmetric_wins_on_shifted_data():
    torch.manual_seed(0)
    w = torch.rand(32, 128) * 0.1 + 1.0  # all in [1.0, 1.1]
    for bits in (2, 4, 8):
        # the affine grid spans [1.0, 1.1] instead of [-1.1, 1.1]: >= 10x lower MSE (2 bits: 4 levels vs 3)
        assert _err(w, QuantSpec(bits=bits, symmetric=False)) < 0.1 * _err(w, QuantSpec(bits=bits))


@pytest.mark.parametrize("symmetric", [True, False])
def test_error_falls_monotonically_from_2_to_8_bits(symmetric):
    torch.manual_seed(1)
    w = torch.randn(32, 256)
    errs = [_err(w, QuantSpec(bits=b, symmetric=symmetric, granularity="group", group_size=64)) for b in range(2, 9)]
    assert all(a > 1.5 * b for a, b in zip(errs, errs[1:])), errs  # each bit roughly quarters the MSE


def test_degenerate_groups_and_dtypes():
    w = torch.zeros(3, 8)
    w[1] = 0.37  # a constant row: the affine grid reproduces it exactly
    w[2] = -2.5
    for sym in (True, False):  # zero rows stay 0; constant rows are grid end points (atol: float32 s * q)
        torch.testing.assert_close(fake_quant(w, QuantSpec(bits=3, symmetric=sym)), w, rtol=0, atol=1e-6)
    wb = torch.randn(4, 16, dtype=torch.bfloat16)
    assert fake_quant(wb, QuantSpec(bits=8)).dtype == torch.bfloat16
    v = torch.randn(50)  # a 1-D tensor is one row
    assert quantize_tensor(v, QuantSpec(bits=4, granularity="group", group_size=16)).scale.shape == (1, 4)


def test_bad_specs_are_refused_naming_the_field():
    for bits in (1, 9, 16, 4.0, True):
        with pytest.raises(ValueError, match=r"bits=.*use one of \[2, 3, 4, 5, 6, 7, 8\]"):
            QuantSpec(bits=bits)
    with pytest.raises(ValueError, match=r"granularity='row'.*\['tensor', 'channel', 'group'\]"):
        QuantSpec(bits=4, granularity="row")
    with pytest.raises(ValueError, match="group_size=0 must be a positive int"):
        QuantSpec(bits=4, granularity="group", group_size=0)
    with pytest.raises(ValueError, match="symmetric='yes' must be a bool"):
        QuantSpec(bits=4, symmetric="yes")
    with pytest.raises(ValueError, match="unknown field"):
        QuantSpec.from_dict({"bits": 4, "signed": True})
    with pytest.raises(ValueError, match="floating-point"):
        quantize_tensor(torch.ones(3, dtype=torch.int32), QuantSpec(bits=4))


def test_spec_is_frozen_hashable_and_roundtrips_through_json_dicts():
    s = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64)
    assert s.granularity is Granularity.GROUP and s.granularity == "group"
    assert QuantSpec.from_dict(s.to_dict()) == s and hash(s) == hash(QuantSpec.from_dict(s.to_dict()))
    assert dataclasses.replace(s, bits=2).bits == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.bits = 8
