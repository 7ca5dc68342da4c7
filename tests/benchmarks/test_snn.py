"""benchmarks.snn end to end with a one-epoch profile (the real profiles train for 30 / 60 epochs)."""

from __future__ import annotations

import json

import benchmarks.snn as bs


def test_snn_benchmark_writes_accuracy_accounting_throughput_and_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(bs, "PROFILE", {"quick": (1, 1), "full": (1, 1)})
    monkeypatch.setattr(bs, "LM_PROFILE", {"quick": (2, 3000), "full": (2, 3000)})
    tiny = ["--steps", "2", "--vision-steps", "0", "--images-per-batch", "8", "--n-train", "16", "--n-val", "8", "--n-test", "8", "--eval-every", "0", "--quiet"]
    monkeypatch.setattr(bs, "mfm_argv", lambda size, profile: ["--size", size, *tiny])
    out = bs.main(["--out", str(tmp_path), "--quiet", "--cache-dir", str(tmp_path / "cache")])
    saved = json.loads((tmp_path / "snn.json").read_text())
    vit = saved["spiking_vit_digits"]
    assert 0.0 <= vit["test_accuracy"] <= 1.0 and vit["accounting"]["sops"] > 0 and vit["accounting"]["layers"]
    assert set(saved["throughput"]["samples_per_second"]) == set(bs.VARIANTS)
    assert {t["name"] for t in saved["targets"]} == {"spiking_vit_digits_test_accuracy", "training_throughput_ours_over_snntorch",
                                                     "spiking_mfm_accuracy_gap_to_ann_mfm"}
    assert out["throughput"]["ratios"]["ours-fused_over_snntorch-peer"] > 0
    mfm = saved["mfm"]
    assert 0.5 < mfm["spiking"]["params"] / mfm["ann"]["params"] < 2.0  # similar size
    assert mfm["spiking_distilled"]["distilled"] and not mfm["spiking"]["distilled"]
    assert mfm["spiking"]["accounting"]["sops"] > 0 and 0 <= mfm["spiking_distilled"]["test"]["accuracy"] <= 1
    lm = saved["lm"]
    assert lm["spiking"]["bits_per_byte"] > 0 and lm["ann_same_size"]["bits_per_byte"] > 0
    assert 0.5 < lm["ann_same_size"]["params"] / lm["spiking"]["params"] < 2.0  # similar size


def test_the_snntorch_peer_is_the_same_network():
    import torch

    from benchmarks.snntorch_spikformer import SnnTorchSpikformer
    from snn.models import Spikformer, SpikformerConfig
    from tasks.digits import load_digits_split

    torch.manual_seed(0)
    cfg = SpikformerConfig(dim=32, depth=1, timesteps=3)
    ours, peer = Spikformer(cfg), SnnTorchSpikformer(cfg)
    x = load_digits_split("train").x[:48]
    y = torch.arange(48) % 10
    opt = torch.optim.AdamW(ours.parameters(), lr=3e-3)
    for _ in range(3):  # non-trivial weights and BN statistics
        loss = torch.nn.functional.cross_entropy(ours(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    missing, unexpected = peer.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("_lif." in k for k in missing)  # snnTorch's neuron constants only
    ours.eval(), peer.eval()
    with torch.no_grad():
        torch.testing.assert_close(peer(x), ours(x), rtol=1e-5, atol=1e-6)
