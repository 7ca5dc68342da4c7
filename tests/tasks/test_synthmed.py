import dataclasses

import numpy as np
import pytest

from tasks.synthmed import (ANSWER_VOCAB, EOS_ID, QUESTION_MAX_LEN, QUESTION_TEMPLATES, QUESTION_VOCAB, SIZE_RANGES,
                            UNK_ID, Lesion, QuestionType, SynthMedConfig, blind_baseline, decode_answer,
                            decode_question, encode_answer, encode_question, generate_synthmed, load_synthmed,
                            make_report)

SMALL = SynthMedConfig(n_train=900, n_val=120, n_test=300, seed=11)
# enough questions per exact text (~110) for the balance check to be about the sampler, not about noise
BALANCE = SynthMedConfig(n_train=3000, n_val=10, n_test=10, seed=5)


def _arrays(s):
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if isinstance(getattr(s, f.name), np.ndarray)}


def test_same_seed_regenerates_identically_and_splits_differ():
    a, b = generate_synthmed("test", SMALL), generate_synthmed("test", SMALL)
    for name, arr in _arrays(a).items():
        assert np.array_equal(arr, _arrays(b)[name]), name
    assert a.meta == b.meta
    val = generate_synthmed("val", SMALL)
    assert not np.array_equal(a.images[: len(val.images)], val.images)
    other_seed = generate_synthmed("test", dataclasses.replace(SMALL, seed=12))
    assert not np.array_equal(a.images, other_seed.images)
    assert load_synthmed("test", SMALL) is load_synthmed("test", SMALL)  # memoized


def test_shapes_dtypes_ranges_and_read_only():
    s = load_synthmed("train", SMALL)
    M, k = SMALL.n_train, SMALL.questions_per_image
    assert s.images.shape == (M, 1, 64, 64) and s.images.dtype == np.float32
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert len(s) == M * k
    assert s.question_ids.shape == (M * k, QUESTION_MAX_LEN) and s.question_ids.dtype == np.int64
    for name in ("answer_ids", "question_type_ids", "template_ids", "image_index"):
        assert getattr(s, name).shape == (M * k,) and getattr(s, name).dtype == np.int64, name
    assert s.all_answer_ids.shape == (M, len(QUESTION_TEMPLATES))
    assert s.sample_images(np.array([0, 5])).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError):
        s.images[0, 0, 0, 0] = 1.0  # cached splits are shared: arrays are read-only
    # every image gets distinct questions
    for m in range(20):
        t = s.template_ids[s.image_index == m]
        assert len(set(t.tolist())) == k


def test_image_size_is_configurable():
    s = generate_synthmed("val", SynthMedConfig(image_size=32, n_val=40, seed=1))
    assert s.images.shape == (40, 1, 32, 32)
    assert all(0 < l.cx < 32 and 0 < l.cy < 32 for m in s.meta for l in m.lesions)


def test_answers_are_in_the_vocabulary_and_match_the_question():
    s = load_synthmed("train", SMALL)
    assert s.answer_ids.min() >= 0 and s.answer_ids.max() < len(ANSWER_VOCAB)
    for n in range(0, len(s), 7):
        t = QUESTION_TEMPLATES[s.template_ids[n]]
        assert decode_question(s.question_ids[n]) == t.text
        assert s.question_type_ids[n] == t.qtype
        assert decode_answer(s.answer_ids[n]) in t.answers


def _oracle(text: str, lesions: tuple[Lesion, ...]) -> str:
    """Answers recomputed from the metadata independently of the templates' own answer functions."""
    n_left = sum(l.cx < 32 for l in lesions)
    n_upper = sum(l.cy < 32 for l in lesions)
    n_hyper = sum(l.intensity == "hyperintense" for l in lesions)
    big = max(lesions, key=lambda l: l.radius) if lesions else None
    small = min(lesions, key=lambda l: l.radius) if lesions else None
    target = small if "smallest" in text else big

    def quad(l):
        return ("upper " if l.cy < 32 else "lower ") + ("left" if l.cx < 32 else "right")

    if text.startswith("how many"):
        return str(len(lesions))
    if text in ("is there a lesion ?", "is there any lesion in the image ?"):
        return "yes" if lesions else "no"
    if text.startswith("is there a lesion in the "):
        return "yes" if any(quad(l) in text for l in lesions) else "no"
    if text.startswith("is there a "):
        return "yes" if any(f"a {l.intensity} " in text for l in lesions) else "no"
    if text == "which side has more lesions ?":
        return "left" if 2 * n_left > len(lesions) else "right" if 2 * n_left < len(lesions) else "equal"
    if text.startswith("are there more lesions in the upper"):
        return "upper" if 2 * n_upper > len(lesions) else "lower" if 2 * n_upper < len(lesions) else "equal"
    if text.startswith("are there more hyperintense"):
        return "yes" if 2 * n_hyper > len(lesions) else "no"
    if target is None:
        return "none"
    if text.startswith(("where", "in which quadrant")):
        return quad(target)
    if text.startswith(("what size", "how big")):
        r = target.radius / 64
        return next(name for name, (lo, hi) in zip(("small", "medium", "large"), SIZE_RANGES) if lo <= r <= hi)
    if text.startswith("what shape"):
        return target.shape
    return target.intensity


def test_an_oracle_reading_the_metadata_gets_every_answer_right():
    s = load_synthmed("train", SMALL)
    for n in range(len(s)):
        m = s.meta[s.image_index[n]]
        assert decode_answer(s.answer_ids[n]) == _oracle(s.question_text(n), m.lesions), (n, s.question_text(n), m.report)


def test_lesion_geometry_is_well_defined():
    s = load_synthmed("train", SMALL)
    counts = np.bincount([m.count for m in s.meta], minlength=4)
    assert counts.max() - counts.min() <= 1  # lesion counts 0..3 balanced over the images
    for m in s.meta:
        r = [l.radius for l in m.lesions]
        assert r == sorted(r, reverse=True)
        assert all(a >= 1.2 * b - 1e-9 for a, b in zip(r, r[1:]))  # unambiguous largest / smallest
        for i, a in enumerate(m.lesions):
            assert abs(a.cx - 32) >= 0.06 * 64 - 1e-9 and abs(a.cy - 32) >= 0.06 * 64 - 1e-9  # clear of midlines
            for b in m.lesions[i + 1:]:
                assert np.hypot(a.cx - b.cx, a.cy - b.cy) > 1.6 * (a.radius + b.radius)  # no overlap
    assert s.meta[0].report == make_report(s.meta[0].lesions)


def test_lesions_are_visible_in_the_pixels():
    s = load_synthmed("val", SMALL)
    for m, meta in enumerate(s.meta[:60]):
        for l in meta.lesions:
            y, x = int(l.cy), int(l.cx)
            patch = s.images[m, 0, y - 1:y + 2, x - 1:x + 2].mean()
            ring = s.images[m, 0, max(y - 12, 0):y + 13, max(x - 12, 0):x + 13]
            # lesion centre brighter (hyper) / darker (hypo) than the surrounding window's median
            sign = 1 if l.intensity == "hyperintense" else -1
            assert sign * (patch - np.median(ring)) > 0.05, (m, meta.report)


def test_answers_are_balanced_within_each_question_text():
    s = load_synthmed("train", BALANCE)
    for q, t in enumerate(QUESTION_TEMPLATES):
        ids = s.answer_ids[s.template_ids == q]
        assert len(ids) > 60, t.text
        share = np.bincount(ids, minlength=len(ANSWER_VOCAB))[[encode_answer(a) for a in t.answers]] / len(ids)
        if set(t.answers) == {"yes", "no"}:
            assert 0.35 <= share.min() and share.max() <= 0.65, (t.text, share)
        else:  # every answer of a closed set occurs, none dominates
            assert share.max() <= 1.6 / len(t.answers), (t.text, share)
    type_share = np.bincount(s.question_type_ids, minlength=len(QuestionType)) / len(s)
    assert type_share.min() > 0.5 / len(QuestionType)


def test_blind_baseline_is_far_from_perfect():
    train, test = load_synthmed("train", BALANCE), load_synthmed("test", dataclasses.replace(BALANCE, n_test=600))
    blind = blind_baseline(train, test)
    assert blind.n == len(test)
    assert blind.accuracy < 0.45
    assert set(blind.per_type) == {t.name.lower() for t in QuestionType}
    assert blind.per_type["presence"] < 0.6 and blind.per_type["count"] < 0.4
    # on its own train split it is an upper bound of what the question text alone can do
    assert blind_baseline(train, train).accuracy < 0.45


def test_question_and_answer_codecs():
    ids = encode_question("How many lesions are there?")
    assert ids.dtype == np.int64 and ids.shape == (QUESTION_MAX_LEN,)
    assert decode_question(ids) == "how many lesions are there ?"
    assert EOS_ID in ids.tolist()
    assert encode_question("is there a tumour ?")[4] == UNK_ID
    with pytest.raises(ValueError, match="max_len"):
        encode_question(" ".join(["lesion"] * QUESTION_MAX_LEN))
    assert all(decode_answer(encode_answer(a)) == a for a in ANSWER_VOCAB)
    with pytest.raises(ValueError, match="ANSWER_VOCAB"):
        encode_answer("maybe")
    assert len(set(QUESTION_VOCAB)) == len(QUESTION_VOCAB)
    assert (len(QUESTION_TEMPLATES), len(ANSWER_VOCAB), QUESTION_MAX_LEN) == (23, 24, 15)  # as the module docstring says


@pytest.mark.parametrize("field, value", [
    ("image_size", 16), ("image_size", 64.0), ("max_lesions", 4), ("max_lesions", 0), ("noise_std", -0.1),
    ("noise_std", float("nan")), ("speckle_std", 1.0), ("texture_std", 0.5), ("n_train", 0), ("n_val", -1),
    ("n_test", 2.5), ("questions_per_image", 0), ("questions_per_image", 9), ("seed", -1),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"SynthMedConfig.{field}="):
        SynthMedConfig(**{field: value})


def test_bad_split_names_the_problem():
    with pytest.raises(ValueError, match="split='dev'"):
        load_synthmed("dev", SMALL)
