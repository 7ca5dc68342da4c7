"""ann.models.hf.load_pretrained: round trips of tiny HF models saved in tmp dirs, and every bad-input error."""

import json
import shutil
import struct
import sys

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from ann.models.hf import CheckpointError, ModelFamily, load_pretrained, supported_model_types

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

# Same weights and same kernels after a reload; the slack only covers a possible change of reduction order.
ATOL, RTOL = 1e-6, 1e-6

_DEC = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip
_ENC = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=32)  # fmt: skip
_VIT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=8)  # fmt: skip


def _save(model, path):
    torch.manual_seed(0)
    model.eval().save_pretrained(path)
    return path


def _tokenizer() -> PreTrainedTokenizerFast:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "a", "b"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_DEC))
    return model.eval(), _save(model, tmp_path_factory.mktemp("llama"))


@pytest.fixture
def broken(llama_dir, tmp_path):
    """A fresh copy of the Llama checkpoint to break."""
    return shutil.copytree(llama_dir[1], tmp_path / "ckpt")


# ---------------------------------------------------------------- round trips


def _ids():
    return torch.tensor([[1, 5, 9, 3, 7]])


@pytest.mark.parametrize(
    "make",
    [lambda: LlamaForCausalLM(LlamaConfig(**_DEC)), lambda: MistralForCausalLM(MistralConfig(**_DEC)),
     lambda: Qwen2ForCausalLM(Qwen2Config(**_DEC))],
    ids=["llama", "mistral", "qwen2"],
)  # fmt: skip
def test_llama_family_round_trip(make, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    loaded = load_pretrained(_save(model, tmp_path / "m"))
    assert loaded.family is ModelFamily.LLAMA
    assert type(loaded.model) is type(model) and not loaded.model.training
    assert loaded.tokenizer_or_processor is None and loaded.path == (tmp_path / "m").resolve()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_ids()).logits, model(_ids()).logits, atol=ATOL, rtol=RTOL)


def test_dtype_is_applied(llama_dir):
    loaded = load_pretrained(llama_dir[1], dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_sharded_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_DEC)).eval()
    model.save_pretrained(tmp_path, max_shard_size="4KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_ids()).logits, model(_ids()).logits, atol=ATOL, rtol=RTOL)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"shard files that are missing.*{shard.name}"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("head", [True, False], ids=["classifier", "bare"])
def test_vit_round_trip_with_and_without_head(head, tmp_path):
    torch.manual_seed(0)
    config = ViTConfig(**_VIT, num_labels=3)
    model = (ViTForImageClassification(config) if head else ViTModel(config)).eval()
    _save(model, tmp_path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.family is ModelFamily.VIT and type(loaded.model) is type(model)
    assert "ViTImageProcessor" in type(loaded.tokenizer_or_processor).__name__
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want, got = model(pixel_values=x), loaded.model(pixel_values=x)
    key = "logits" if head else "last_hidden_state"
    torch.testing.assert_close(got[key], want[key], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "make",
    [lambda: BertForSequenceClassification(BertConfig(**_ENC, num_labels=2)), lambda: BertModel(BertConfig(**_ENC)),
     lambda: RobertaForMaskedLM(RobertaConfig(**_ENC, pad_token_id=1)),
     lambda: DistilBertModel(DistilBertConfig(vocab_size=64, dim=16, hidden_dim=32, n_layers=1, n_heads=2,
                                              max_position_embeddings=32)),
     lambda: AlbertForMaskedLM(AlbertConfig(**_ENC, embedding_size=8)),
     lambda: ElectraForSequenceClassification(ElectraConfig(**_ENC, embedding_size=8, num_labels=2))],
    ids=["bert-cls", "bert-bare", "roberta-mlm", "distilbert", "albert-mlm", "electra-cls"],
)  # fmt: skip
def test_bert_family_round_trip_picks_head_from_architectures(make, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    _save(model, tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.family is ModelFamily.BERT and type(loaded.model) is type(model)
    tok = loaded.tokenizer_or_processor
    ids = torch.tensor([tok("hello world b a")["input_ids"]])
    assert ids.tolist() == [[4, 5, 7, 6]]
    with torch.no_grad():
        want, got = model(input_ids=ids), loaded.model(input_ids=ids)
    torch.testing.assert_close(got[0], want[0], atol=ATOL, rtol=RTOL)


def test_llava_round_trip(tmp_path):
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=ViTConfig(**_VIT), text_config=LlamaConfig(**_DEC), image_token_index=63,
                         vision_feature_layer=-1)  # fmt: skip
    model = LlavaForConditionalGeneration(config).eval()
    _save(model, tmp_path)
    processor = LlavaProcessor(image_processor=ViTImageProcessor(size={"height": 16, "width": 16}),
                               tokenizer=_tokenizer(), patch_size=8, image_token="[UNK]")  # fmt: skip
    processor.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.family is ModelFamily.LLAVA and type(loaded.model) is type(model)
    assert isinstance(loaded.tokenizer_or_processor, LlavaProcessor)
    # 16x16 image, 8x8 patches -> 4 patch tokens (+ CLS, dropped by the default "default" feature strategy).
    ids = torch.tensor([[1] + [63] * 4 + [5, 9]])
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels).logits
        got = loaded.model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_supported_model_types_cover_every_family():
    table = supported_model_types()
    assert set(table) == set(ModelFamily)
    assert {"llava", "neuromfm_llava", "llama", "vit", "bert"} <= {t for types in table.values() for t in types}


# ---------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*save_pretrained"):
        load_pretrained(tmp_path / "nope")


def test_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory.*save_pretrained"):
        load_pretrained(tmp_path / "f")


def test_no_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json.*save_pretrained"):
        load_pretrained(tmp_path)


def test_config_not_json(broken):
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_pretrained(broken)


def test_config_without_model_type(broken):
    cfg = json.loads((broken / "config.json").read_text())
    del cfg["model_type"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json has no 'model_type' field"):
        load_pretrained(broken)


@pytest.mark.parametrize("model_type", ["gpt2", "t5"])
def test_unsupported_model_type_lists_supported(broken, model_type):
    (broken / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(CheckpointError, match=rf"'{model_type}' is not supported.*LLAMA: llama.*BERT: bert"):
        load_pretrained(broken)


def test_no_weights(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights file: expected model\.safetensors"):
        load_pretrained(broken)


def test_pickle_weights_are_refused(broken):
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"must never be unpickled")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*pickle-based.*convert it to safetensors"):
        load_pretrained(broken)


def test_truncated_safetensors(broken):
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt.*data_offsets.*safe_serialization=True"):
        load_pretrained(broken)


def test_truncated_inside_header(broken):
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt.*header length"):
        load_pretrained(broken)


def test_garbage_header(broken):
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + n] = b"\xff" * n  # same length, not JSON
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt.*not valid JSON.*re-save"):
        load_pretrained(broken)


def test_garbage_header_length(broken):
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\xde\xad\xbe\xef" * 4 + data[16:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt.*header length"):
        load_pretrained(broken)


def test_weights_not_matching_config_are_wrapped_with_path(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"{broken}.*from_pretrained failed") as info:
        load_pretrained(broken)
    assert info.value.__cause__ is not None


def test_head_missing_from_weights(tmp_path):
    _save(BertModel(BertConfig(**_ENC)), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["BertForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"do not cover .*classifier"):
        load_pretrained(tmp_path)


def test_mfm_model_type_needs_its_module(broken, monkeypatch):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model_type"] = "neuromfm_llava"
    (broken / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setitem(sys.modules, "ann.models.mfm", None)  # makes `import ann.models.mfm` raise ImportError
    with pytest.raises(CheckpointError, match=r"'neuromfm_llava' is defined by ann\.models\.mfm"):
        load_pretrained(broken)


def test_mfm_round_trip(tmp_path):
    mfm = pytest.importorskip("ann.models.mfm")  # our own Llava subclass, registered by importing it
    model = mfm.build_mfm(mfm.MFM_PRESETS["small"], vocab_size=64, image_token_id=5, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2)  # fmt: skip
    _save(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.family is ModelFamily.LLAVA and type(loaded.model) is type(model)
    v = model.config.vision_config
    ids = torch.tensor([[1] + [5] * model.num_visual_tokens + [7, 9]])
    pixels = torch.randn(1, v.num_channels, v.image_size, v.image_size)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels).logits
        got = loaded.model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
