"""Pieces of benchmarks.quant that run without SmolLM2 or a trained MFM (the benchmark itself takes ~10 min)."""

import numpy as np
import torch

import benchmarks.quant as bq


def test_images_keeps_every_question_of_those_images():
    from ann.models.mfm_tokenizer import build_vqa_tokenizer
    from ann.train.vqa import encode_vqa
    from tasks.synthmed import SynthMedConfig, load_synthmed

    split = load_synthmed("val", SynthMedConfig(n_train=4, n_val=6, n_test=4))
    data = encode_vqa(split, build_vqa_tokenizer(), 4)
    sub = bq._images(data, 1, 3)
    idx = data.by_image[1:3].reshape(-1)
    assert sub.images.shape[0] == 2 and sub.by_image.tolist() == np.arange(len(idx)).reshape(2, -1).tolist()
    assert torch.equal(sub.input_ids, data.input_ids[torch.from_numpy(idx)]) and torch.equal(sub.images, data.images[1:3])
    assert sub.answers == tuple(data.answers[i] for i in idx) and set(sub.image_index.tolist()) == {0, 1}
    assert torch.equal(sub.all_answers, data.all_answers[1:3])


def test_targets_compare_mixed_and_uniform_at_equal_bits():
    p = bq.Profile(eval_bytes=1, calib_tokens=1, calib_batches=1, choices=(2, 4), uniform_bits=(2, 4), avg_bits=(3.0, 4.0),
                   decode_tokens=1, mfm_size="small", mfm_calib_images=1, mfm_test_images=1, val_tokens=1)
    mfm = {"fp32": {"accuracy": 0.6}, "uniform 4-bit": {"accuracy": 0.5}, "mixed 4-bit": {"accuracy": 0.58},
           "test_questions": 3000}
    lm = {"fp32": {"bits_per_byte": 0.77}, "uniform 4-bit": {"bits_per_byte": 1.07}, "mixed 4-bit": {"bits_per_byte": 1.2},
          "int8": {"fp32": {"tokens_per_second": 10.0, "perplexity": 5.0},
                   bq.INT8_W8A16: {"tokens_per_second": 19.0, "perplexity": 5.05},
                   bq.INT8_W8A8: {"tokens_per_second": 17.0, "perplexity": 5.08}}}
    t = {x.name: x for x in bq._targets(mfm, lm, p)}
    assert set(t) == {"mfm_mixed_closer_to_fp32_than_uniform_at_4_bits", "smollm2_mixed_closer_to_fp32_than_uniform_at_4_bits",
                      "smollm2_int8_decode_speedup", "smollm2_int8_perplexity_increase"}  # 3 bits: no uniform 3-bit to compare
    assert t["mfm_mixed_closer_to_fp32_than_uniform_at_4_bits"].met and not t["smollm2_mixed_closer_to_fp32_than_uniform_at_4_bits"].met
    assert t["smollm2_int8_decode_speedup"].met and t["smollm2_int8_perplexity_increase"].met  # scored on W8A16
    assert t["smollm2_int8_decode_speedup"].measured == 1.9
    # a uniform loss within two standard errors of fp32's accuracy cannot be beaten measurably: not scored
    mfm["uniform 4-bit"]["accuracy"] = 0.59  # 1 point; 2 SE at 3000 questions = 1.8 points
    assert "mfm_mixed_closer_to_fp32_than_uniform_at_4_bits" not in {x.name for x in bq._targets(mfm, lm, p)}
    res = bq._mfm_resolution(mfm, p)
    assert set(res) == {"4"} and not res["4"]["scored"] and abs(res["4"]["two_standard_errors"] - 0.0179) < 1e-3
