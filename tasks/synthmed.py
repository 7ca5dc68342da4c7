"""SynthMed-VQA: a seeded, procedural, entirely SYNTHETIC medical-style visual question answering task.

What it is
----------
Every image is a grayscale, scan-like "axial slice" drawn from scratch by a random-number generator: a body
ellipse with a darker subcutaneous rim and a bright skin line, a bright vertebra-like ring at the bottom,
smooth low-frequency tissue texture, Gaussian and multiplicative (speckle) noise, and 0..``max_lesions``
focal lesions. Each image has a findings report ("Two lesions. A large round hyperintense lesion in the upper
left. ...") and template questions of seven types (presence, count, location, size, shape, intensity,
comparison) whose answers come from a closed vocabulary. Nothing here is patient data, nothing is
downloaded, and nothing learnt on it says anything about clinical images.

What it measures, and what not
------------------------------
It measures whether a vision+language model grounds closed-form questions in pixels: detecting, counting
and localising small blobs in texture and noise, and reading their size, shape and contrast. Answers are
balanced per exact question text (see :func:`_choose_questions`), so a question-only ("blind") predictor is
near chance (:func:`blind_baseline`), and the gap between blind and image+question accuracy is what the
image contributes. It does NOT measure open-ended generation, clinical knowledge, real anatomy, or
robustness to real scanner artefacts, and scores on it are not comparable to real medical VQA benchmarks.

Questions and answers
---------------------
23 fixed question texts (:data:`QUESTION_TEMPLATES`) in 7 types, word-level vocabulary
(:data:`QUESTION_VOCAB`, with <pad>/<bos>/<eos>/<unk>, length :data:`QUESTION_MAX_LEN`) and 24 answers
(:data:`ANSWER_VOCAB`): presence (yes/no: any lesion, per quadrant, per intensity), count (0..3), location
of the largest/smallest lesion (quadrant), its size, shape and intensity, and comparison (which side / half
has more lesions: left/right/equal, upper/lower/equal; more hyper- than hypointense lesions: yes/no).
Questions about "the largest/smallest lesion" of an image without lesions are answered "none". Every image
is asked ``questions_per_image`` distinct texts, chosen so that each type gets about 1/7 of the samples and
the answers of each exact text are about uniform (:func:`_choose_questions`).

Geometry and attribute definitions (``S`` = ``config.image_size`` px)
----------------------------------------------------------------------
Pixel (row i, column j) has centre ``(x, y) = (j + 0.5, i + 0.5)``; x grows to the right, y downwards; the
image centre is ``c = S / 2``. "left"/"right"/"upper"/"lower" are as the viewer sees the image (no
radiological left/right flip). A lesion's quadrant is the side of its centre ``(cx, cy)``:
upper iff ``cy < c``, left iff ``cx < c``; centres are kept at least ``0.06 S`` from both midlines.

Size: equivalent radius ``r`` (px) with area ``pi r^2``; classes by ``r / S``: small [0.040, 0.055],
medium [0.070, 0.085], large [0.105, 0.125]. Within an image sorted radii satisfy
``r_(i) >= 1.2 r_(i+1)``, so "the largest" and "the smallest" lesion are unambiguous.

Shape: the boundary in polar coordinates ``rho(psi)`` around the centre, ``psi = theta - phi``:
  round      ``rho = r``
  oval       ``rho = r / sqrt(cos^2(psi) / e + e sin^2(psi))``  (semi-axes ``r sqrt(e)``, ``r / sqrt(e)``, e in [2.0, 2.5])
  irregular  ``rho = r (1 + a1 cos(k psi) + a2 cos((k + 2) psi + phi2)) / sqrt(1 + (a1^2 + a2^2) / 2)``
             (lobulated; k in {3, 4, 5}, a1 in [0.26, 0.34], a2 in [0.10, 0.15])
All three have area ``pi r^2``. A pixel at distance ``d`` from the centre is covered ``clip(rho - d + 0.5, 0, 1)``
(a one-pixel anti-aliased edge). Lesions do not overlap: extents (``1.6 r``) are kept ``0.03 S`` apart, and
from the body edge and the vertebra ring. Lesion counts are balanced over the images (0..max_lesions).

Intensity: hyperintense lesions add ``+contrast``, hypointense ones ``-contrast`` to the local tissue,
``contrast`` in [0.18, 0.30] (tissue is about 0.5 on a [0, 1] scale).
"""

from __future__ import annotations

import enum
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

__all__ = [
    "SynthMedConfig", "Split", "QuestionType", "Lesion", "ImageMeta", "QuestionTemplate", "SynthMedSplit",
    "BlindBaselineResult", "QUESTION_TEMPLATES", "QUESTION_VOCAB", "ANSWER_VOCAB", "QUESTION_MAX_LEN",
    "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "VQA_VOCAB", "VQA_SPECIAL_TOKENS", "VQA_IMAGE_TOKEN", "encode_question", "decode_question", "encode_answer",
    "decode_answer", "generate_synthmed", "load_synthmed", "blind_baseline", "accuracy_by_type", "make_report",
]


@dataclass(frozen=True)
class SynthMedConfig:
    """Generation parameters; one config + one split name determine a split bit for bit.

    Attributes:
        image_size: side S of the square images in px (32..256); lesion sizes scale with it.
        max_lesions: lesions per image are uniform on {0, ..., max_lesions} (1..3).
        noise_std: std of additive Gaussian noise on the [0, 1] intensity scale.
        speckle_std: std of the multiplicative noise factor (1 + speckle_std * N(0, 1)).
        texture_std: std of the smooth low-frequency tissue texture.
        n_train, n_val, n_test: images per split (each image carries ``questions_per_image`` questions).
        questions_per_image: distinct questions asked about every image (1..8).
        seed: master seed; split s uses ``SeedSequence([seed, index of s])``.
    """

    image_size: int = 64
    max_lesions: int = 3
    noise_std: float = 0.05
    speckle_std: float = 0.05
    texture_std: float = 0.05
    n_train: int = 4000
    n_val: int = 500
    n_test: int = 1000
    questions_per_image: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SynthMedConfig.{field}={getattr(self, field)!r} is invalid: {fix}")

        def is_int(v: object) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        need(is_int(self.image_size) and 32 <= self.image_size <= 256, "image_size",
             "use an int in [32, 256] (lesions smaller than ~1.3 px below 32 are invisible)")
        need(is_int(self.max_lesions) and 1 <= self.max_lesions <= 3, "max_lesions",
             "use an int in [1, 3] (the count answers are the closed set 0..3)")
        for name in ("noise_std", "speckle_std", "texture_std"):
            v = getattr(self, name)
            need(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 0.3, name,
                 "use a finite float in [0, 0.3] (larger noise hides the lesions entirely)")
        for name in ("n_train", "n_val", "n_test"):
            v = getattr(self, name)
            need(is_int(v) and 1 <= v <= 1_000_000, name, "use an int in [1, 1000000]")
        need(is_int(self.questions_per_image) and 1 <= self.questions_per_image <= 8,
             "questions_per_image", "use an int in [1, 8] (more would ask nearly every template about every image)")
        need(is_int(self.seed) and 0 <= self.seed < 2**63, "seed", "use a non-negative int below 2**63")


class Split(str, enum.Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class QuestionType(enum.IntEnum):
    PRESENCE = 0
    COUNT = 1
    LOCATION = 2
    SIZE = 3
    SHAPE = 4
    INTENSITY = 5
    COMPARISON = 6


SIZES = ("small", "medium", "large")
SIZE_RANGES = ((0.040, 0.055), (0.070, 0.085), (0.105, 0.125))  # r / S per size class
SHAPES = ("round", "oval", "irregular")
INTENSITIES = ("hyperintense", "hypointense")
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
_EXTENT = 1.6  # lesion extent / r: bounds every shape's rho (oval sqrt(2.5) ~ 1.58, irregular < 1.45)
_MIN_RATIO = 1.2  # sorted radii in one image differ by at least this factor


@dataclass(frozen=True)
class Lesion:
    """One lesion: centre (cx, cy) in px (module docstring for the frame), equivalent radius in px, attributes."""

    cx: float
    cy: float
    radius: float
    size: str
    shape: str
    intensity: str
    contrast: float
    quadrant: str

    @property
    def is_left(self) -> bool:
        return self.quadrant.endswith("left")

    @property
    def is_upper(self) -> bool:
        return self.quadrant.startswith("upper")


@dataclass(frozen=True)
class ImageMeta:
    """Ground truth of one image; ``lesions`` is sorted by radius, largest first."""

    lesions: tuple[Lesion, ...]
    report: str

    @property
    def count(self) -> int:
        return len(self.lesions)


def make_report(lesions: tuple[Lesion, ...]) -> str:
    """Findings text, e.g. "Two lesions. A large round hyperintense lesion in the upper left. ..."."""
    if not lesions:
        return "No focal lesion."
    head = ("One lesion.", "Two lesions.", "Three lesions.")[len(lesions) - 1]
    body = [f"A {l.size} {l.shape} {l.intensity} lesion in the {l.quadrant}." for l in lesions]
    return " ".join([head, *body])


# ---------------------------------------------------------------- questions and vocabularies

@dataclass(frozen=True)
class QuestionTemplate:
    """A fully instantiated question text, its type, its answer set and how to answer it from the metadata.

    ``answer(lesions)`` returns the answer string, or None when the question does not apply (such pairs are
    never asked). Questions about "the largest/smallest lesion" of an image without lesions are answered "none":
    that keeps images without lesions usable for every question type, which the per-text answer balance needs.
    """

    text: str
    qtype: QuestionType
    answers: tuple[str, ...]
    answer: Callable[[tuple[Lesion, ...]], str | None]


NONE = "none"  # answer to "... the largest lesion?" when there is no lesion


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _on(pick: Callable[[tuple[Lesion, ...]], Lesion], attr: str) -> Callable[[tuple[Lesion, ...]], str | None]:
    return lambda ls: getattr(pick(ls), attr) if ls else NONE


def _cmp(a: int, b: int, names: tuple[str, str]) -> str:
    return names[0] if a > b else names[1] if b > a else "equal"


_largest = lambda ls: ls[0]  # noqa: E731  (lesions are sorted largest first)
_smallest = lambda ls: ls[-1]  # noqa: E731
_YN = ("yes", "no")


def _templates() -> tuple[QuestionTemplate, ...]:
    T, Q = QuestionTemplate, QuestionType
    out = [
        T("is there a lesion ?", Q.PRESENCE, _YN, lambda ls: _yes(len(ls) > 0)),
        T("is there any lesion in the image ?", Q.PRESENCE, _YN, lambda ls: _yes(len(ls) > 0)),
        *[T(f"is there a lesion in the {q} ?", Q.PRESENCE, _YN, lambda ls, q=q: _yes(any(l.quadrant == q for l in ls)))
          for q in QUADRANTS],
        *[T(f"is there a {i} lesion ?", Q.PRESENCE, _YN, lambda ls, i=i: _yes(any(l.intensity == i for l in ls)))
          for i in INTENSITIES],
        T("how many lesions are there ?", Q.COUNT, ("0", "1", "2", "3"), lambda ls: str(len(ls))),
        T("how many lesions can be seen ?", Q.COUNT, ("0", "1", "2", "3"), lambda ls: str(len(ls))),
    ]
    for which, pick in (("largest", _largest), ("smallest", _smallest)):
        out += [
            T(f"where is the {which} lesion ?", Q.LOCATION, QUADRANTS + (NONE,), _on(pick, "quadrant")),
            T(f"what size is the {which} lesion ?", Q.SIZE, SIZES + (NONE,), _on(pick, "size")),
            T(f"what shape is the {which} lesion ?", Q.SHAPE, SHAPES + (NONE,), _on(pick, "shape")),
            T(f"is the {which} lesion hyperintense or hypointense ?", Q.INTENSITY, INTENSITIES + (NONE,), _on(pick, "intensity")),
        ]
    out += [
        T("in which quadrant is the largest lesion ?", Q.LOCATION, QUADRANTS + (NONE,), _on(_largest, "quadrant")),
        T("how big is the largest lesion ?", Q.SIZE, SIZES + (NONE,), _on(_largest, "size")),
        T("which side has more lesions ?", Q.COMPARISON, ("left", "right", "equal"),
          lambda ls: _cmp(sum(l.is_left for l in ls), sum(not l.is_left for l in ls), ("left", "right"))),
        T("are there more lesions in the upper half or the lower half ?", Q.COMPARISON, ("upper", "lower", "equal"),
          lambda ls: _cmp(sum(l.is_upper for l in ls), sum(not l.is_upper for l in ls), ("upper", "lower"))),
        T("are there more hyperintense than hypointense lesions ?", Q.COMPARISON, _YN,
          lambda ls: _yes(sum(l.intensity == "hyperintense" for l in ls) > sum(l.intensity == "hypointense" for l in ls))),
    ]
    return tuple(out)


QUESTION_TEMPLATES: tuple[QuestionTemplate, ...] = _templates()
ANSWER_VOCAB: tuple[str, ...] = tuple(dict.fromkeys(a for t in QUESTION_TEMPLATES for a in t.answers))
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
QUESTION_VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>") + tuple(
    sorted({w for t in QUESTION_TEMPLATES for w in t.text.split()}))
QUESTION_MAX_LEN: int = 2 + max(len(t.text.split()) for t in QUESTION_TEMPLATES)  # + <bos>, <eos>
_WORD_ID: Mapping[str, int] = {w: i for i, w in enumerate(QUESTION_VOCAB)}
# The generative models' word vocabulary (the ANN MFM's tokenizer and the spiking MFM share it, so token ids and
# logits line up for distillation): specials incl. the visual placeholder, every question word, then every word of
# an answer not already there (multi-word answers such as "upper left" are two tokens).
VQA_IMAGE_TOKEN = "<image>"
VQA_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", VQA_IMAGE_TOKEN)
VQA_VOCAB: tuple[str, ...] = VQA_SPECIAL_TOKENS + tuple(dict.fromkeys(
    [w for w in QUESTION_VOCAB if w not in VQA_SPECIAL_TOKENS] + [w for a in ANSWER_VOCAB for w in a.split()]))
_ANSWER_ID: Mapping[str, int] = {a: i for i, a in enumerate(ANSWER_VOCAB)}


def encode_question(text: str, *, max_len: int = QUESTION_MAX_LEN) -> np.ndarray:
    """Word-level ids ``[<bos>, w_1, ..., w_n, <eos>, <pad>, ...]`` of length ``max_len`` (int64).

    Words are whitespace-separated and lower-cased; a trailing "?" is split off; unknown words map to <unk>.
    """
    words = text.lower().replace("?", " ?").split()
    if len(words) + 2 > max_len:
        raise ValueError(f"question has {len(words)} words, more than max_len={max_len} - 2; raise max_len")
    ids = np.full(max_len, PAD_ID, dtype=np.int64)
    ids[: len(words) + 2] = [BOS_ID, *(_WORD_ID.get(w, UNK_ID) for w in words), EOS_ID]
    return ids


def decode_question(ids: np.ndarray) -> str:
    """Inverse of :func:`encode_question` (special tokens dropped)."""
    return " ".join(QUESTION_VOCAB[int(i)] for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID))


def encode_answer(answer: str) -> int:
    if answer not in _ANSWER_ID:
        raise ValueError(f"answer {answer!r} is not in ANSWER_VOCAB {ANSWER_VOCAB}")
    return _ANSWER_ID[answer]


def decode_answer(answer_id: int) -> str:
    return ANSWER_VOCAB[int(answer_id)]


_TEMPLATE_TOKENS = np.stack([encode_question(t.text) for t in QUESTION_TEMPLATES])  # (Q, L)
_TEMPLATE_TYPE = np.array([int(t.qtype) for t in QUESTION_TEMPLATES], dtype=np.int64)  # (Q,)


# ---------------------------------------------------------------- the split container

@dataclass(frozen=True)
class SynthMedSplit:
    """One split: M images and N = M * questions_per_image (image, question, answer) samples.

    Images are stored once; sample n asks about image ``image_index[n]`` (use :meth:`sample_images`).
    All arrays are read-only (splits are cached and shared).

    Attributes:
        images: float32 (M, 1, S, S) in [0, 1].
        image_index: int64 (N,) image of each sample.
        question_ids: int64 (N, QUESTION_MAX_LEN) from :func:`encode_question`.
        answer_ids: int64 (N,) indices into ANSWER_VOCAB.
        question_type_ids: int64 (N,) ``QuestionType`` values.
        template_ids: int64 (N,) indices into QUESTION_TEMPLATES (the exact question text).
        all_answer_ids: int64 (M, Q) answer of every template for every image (-1: not applicable), for
            analysis and auxiliary supervision; only the (image, template) pairs above are "asked".
        meta: per-image ground truth (lesions, report).
    """

    split: Split
    config: SynthMedConfig
    images: np.ndarray
    image_index: np.ndarray
    question_ids: np.ndarray
    answer_ids: np.ndarray
    question_type_ids: np.ndarray
    template_ids: np.ndarray
    all_answer_ids: np.ndarray
    meta: tuple[ImageMeta, ...]

    def __len__(self) -> int:
        return int(self.answer_ids.shape[0])

    @property
    def reports(self) -> tuple[str, ...]:
        return tuple(m.report for m in self.meta)

    def sample_images(self, idx: np.ndarray) -> np.ndarray:
        """Images of samples ``idx``: (len(idx), 1, S, S) float32."""
        return self.images[self.image_index[idx]]

    def question_text(self, n: int) -> str:
        return QUESTION_TEMPLATES[int(self.template_ids[n])].text


# ---------------------------------------------------------------- image layout and rendering

def _layout(count: int, S: int, rng: np.random.Generator) -> tuple[tuple, list[dict]]:
    """Body ellipse and ``count`` non-overlapping lesions for one image (rejection sampling)."""
    c = S / 2
    body = (c + rng.uniform(-0.03, 0.03) * S, c + rng.uniform(-0.03, 0.03) * S,
            rng.uniform(0.43, 0.48) * S, rng.uniform(0.38, 0.44) * S)
    bx, by, ax, ay = body
    spine = (bx, by + 0.72 * ay, 0.07 * S)  # vertebra-like ring: lesions keep clear of it
    gap, mid = 0.03 * S, 0.06 * S
    for _ in range(200):  # resample the whole set until it fits (almost always a few tries)
        sizes = rng.integers(0, 3, size=count)
        radii = np.sort(np.array([rng.uniform(*SIZE_RANGES[k]) * S for k in sizes]))[::-1]
        if count > 1 and np.any(radii[:-1] < _MIN_RATIO * radii[1:]):
            continue
        placed: list[tuple[float, float, float]] = []
        for r in radii:
            ext = _EXTENT * r
            for _ in range(50):
                q = rng.integers(0, 4)
                sx, sy = (1 if q % 2 else -1), (1 if q >= 2 else -1)
                cx = c + sx * rng.uniform(mid, ax)
                cy = c + sy * rng.uniform(mid, ay)
                ex, ey = ax - ext - gap, ay - ext - gap
                if ex <= 0 or ey <= 0 or ((cx - bx) / ex) ** 2 + ((cy - by) / ey) ** 2 > 1:
                    continue
                if (cx - spine[0]) ** 2 + (cy - spine[1]) ** 2 < (ext + spine[2] + gap) ** 2:
                    continue
                if all((cx - px) ** 2 + (cy - py) ** 2 >= (ext + _EXTENT * pr + gap) ** 2 for px, py, pr in placed):
                    placed.append((cx, cy, r))
                    break
            else:
                break
        if len(placed) == count:
            break
    else:  # pragma: no cover - geometry above always fits at least one layout
        raise RuntimeError(f"could not place {count} lesions in a {S}px image; lower max_lesions")
    lesions = []
    for cx, cy, r in placed:
        size = next(k for k, (lo, hi) in enumerate(SIZE_RANGES) if r <= hi * S + 1e-9)
        shape = int(rng.integers(0, 3))
        lesions.append(dict(cx=cx, cy=cy, r=r, size=size, shape=shape, sign=int(rng.integers(0, 2)),
                            contrast=rng.uniform(0.18, 0.30), phi=rng.uniform(0, 2 * np.pi),
                            e=rng.uniform(2.0, 2.5), k=int(rng.integers(3, 6)), a1=rng.uniform(0.26, 0.34),
                            a2=rng.uniform(0.10, 0.15), phi2=rng.uniform(0, 2 * np.pi)))
    return body, lesions


def _smooth_field(rng: np.random.Generator, B: int, S: int) -> np.ndarray:
    """Unit-std random tissue texture (B, S, S): a white complex spectrum shaped by
    ``H(f) = exp(-f^2 / (2 * 0.05^2)) + (0.4 / 3) exp(-f^2 / (2 * 0.15^2))`` (f in cycles/px), inverse-FFT'd,
    std-normalized per image (a smooth component plus a weaker finer grain)."""
    f2 = np.fft.fftfreq(S)[:, None] ** 2 + np.fft.rfftfreq(S)[None, :] ** 2  # (S, S//2+1)
    H = np.exp(-f2 / (2 * 0.05**2)) + (0.4 / 3) * np.exp(-f2 / (2 * 0.15**2))
    spec = rng.standard_normal((B, S, S // 2 + 1), dtype=np.float32) \
        + 1j * rng.standard_normal((B, S, S // 2 + 1), dtype=np.float32)
    field = np.fft.irfft2(spec * H, s=(S, S)).astype(np.float32)
    return field / field.std(axis=(1, 2), keepdims=True)


_LESION_KEYS = ("cx", "cy", "r", "shape", "sign", "contrast", "phi", "e", "k", "a1", "a2", "phi2")


def _render(bodies: list[tuple], lesions: list[list[dict]], cfg: SynthMedConfig, rng: np.random.Generator) -> np.ndarray:
    """Images (B, S, S) float32 in [0, 1] for one chunk of layouts (vectorized over the chunk).

    Lesions are drawn in a (W, W) window around each centre, W just above the largest possible extent.
    """
    B, S, L = len(bodies), cfg.image_size, cfg.max_lesions
    f32 = np.float32
    y, x = (np.mgrid[0:S, 0:S].astype(f32) + f32(0.5))  # (S, S) pixel centres
    bx, by, ax, ay = (np.array(v, dtype=f32)[:, None, None] for v in zip(*bodies))  # each (B, 1, 1)
    e = np.sqrt(((x - bx) / ax) ** 2 + ((y - by) / ay) ** 2)  # (B, S, S) elliptic radius, 1 on the body edge
    inside = np.clip((1 - e) * np.minimum(ax, ay) + 0.5, 0, 1)  # anti-aliased body mask
    tissue = (rng.uniform(0.45, 0.55, size=(B, 1, 1)).astype(f32)
              - 0.15 * np.clip((e - 0.84) / 0.04, 0, 1) * np.clip((0.97 - e) / 0.02, 0, 1)  # fat rim
              + 0.12 * np.exp(-(((e - 0.985) / 0.012) ** 2))  # skin line
              + f32(cfg.texture_std) * _smooth_field(rng, B, S))
    d_sp = np.sqrt((x - bx) ** 2 + (y - (by + 0.72 * ay)) ** 2) / f32(0.07 * S)  # spine ring, radius 0.07 S
    tissue += 0.35 * np.exp(-(((d_sp - 0.75) / 0.25) ** 2)) + 0.1 * (d_sp < 0.6)
    img = 0.04 + inside * (tissue - 0.04)  # (B, S, S)
    W = min(S, int(np.ceil(2 * _EXTENT * SIZE_RANGES[-1][1] * S)) + 3)
    for j in range(L):
        idx = np.array([b for b, ls in enumerate(lesions) if len(ls) > j], dtype=np.int64)
        if idx.size == 0:
            continue
        p = {k: np.array([lesions[b][j][k] for b in idx], dtype=f32)[:, None, None] for k in _LESION_KEYS}
        x0 = np.clip(np.floor(p["cx"][:, 0, 0] - W / 2), 0, S - W).astype(np.int64)  # (n,) window corners
        y0 = np.clip(np.floor(p["cy"][:, 0, 0] - W / 2), 0, S - W).astype(np.int64)
        cols, rows = x0[:, None] + np.arange(W), y0[:, None] + np.arange(W)  # (n, W) each
        dx = cols[:, None, :].astype(f32) + f32(0.5) - p["cx"]  # (n, 1, W) - (n, 1, 1) -> (n, 1, W)
        dy = rows[:, :, None].astype(f32) + f32(0.5) - p["cy"]  # (n, W, 1)
        d, psi = np.hypot(dx, dy), np.arctan2(dy, dx) - p["phi"]  # (n, W, W)
        oval = p["r"] / np.sqrt(np.cos(psi) ** 2 / p["e"] + p["e"] * np.sin(psi) ** 2)
        irr = p["r"] * (1 + p["a1"] * np.cos(p["k"] * psi) + p["a2"] * np.cos((p["k"] + 2) * psi + p["phi2"])) \
            / np.sqrt(1 + (p["a1"] ** 2 + p["a2"] ** 2) / 2)
        rho = np.where(p["shape"] == 0, p["r"], np.where(p["shape"] == 1, oval, irr))
        cover = np.clip(rho - d + 0.5, 0, 1)  # (n, W, W)
        # one lesion per image in this slot, so the fancy-indexed += has no duplicate indices
        img[idx[:, None, None], rows[:, :, None], cols[:, None, :]] += np.where(p["sign"] == 0, 1, -1) * p["contrast"] * cover
    noise = rng.standard_normal((2, B, S, S), dtype=f32)
    img = img * (1 + f32(cfg.speckle_std) * noise[0]) + f32(cfg.noise_std) * noise[1]
    return np.clip(img, 0, 1).astype(f32)


# ---------------------------------------------------------------- question selection

def _inclusion(w: np.ndarray, k: int) -> np.ndarray:
    """Inclusion probabilities (M, Q) proportional to weights ``w`` with rows summing to k, capped at 1.

    Mass above 1 is redistributed over the uncapped entries (at most k rounds: each round caps >= 1 entry).
    """
    pi = k * w / w.sum(axis=1, keepdims=True)
    for _ in range(k + 1):
        cap = pi >= 1
        free = np.where(cap, 0.0, pi)
        scale = (k - cap.sum(axis=1, keepdims=True)) / np.maximum(free.sum(axis=1, keepdims=True), 1e-300)
        pi = np.where(cap, 1.0, free * scale)
    return pi


def _systematic_sample(pi: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct column ids per row with exact inclusion probabilities ``pi`` (rows sum to k, entries <= 1).

    Systematic (Madow) sampling over a random column order: with cumulative sums C of the permuted pi, pick the
    columns whose interval (C_prev, C] holds one of the points u, u + 1, ..., u + k - 1, u ~ U[0, 1).
    """
    M, Q = pi.shape
    perm = np.argsort(rng.random((M, Q)), axis=1)  # (M, Q) random column order per row
    cum = np.cumsum(np.take_along_axis(pi, perm, axis=1), axis=1)  # (M, Q)
    cum *= k / cum[:, -1:]  # exact total k despite rounding
    points = rng.random((M, 1)) + np.arange(k)[None, :]  # (M, k)
    pos = np.argmax(cum[:, None, :] > points[:, :, None], axis=2)  # (M, k, Q) -> (M, k) first interval past
    return np.take_along_axis(perm, pos, axis=1)


def _choose_questions(answers: np.ndarray, k: int, rng: np.random.Generator, iters: int = 200) -> np.ndarray:
    """Pick ``k`` distinct applicable templates per image so answers are balanced per question text.

    ``answers`` (M, Q) holds answer ids, -1 where template q does not apply to image m. Image m includes
    template q with probability ``pi[m, q]`` = :func:`_inclusion` of weights ``exp(logw[q, answers[m, q]])``,
    sampled exactly by :func:`_systematic_sample`. ``logw`` is fitted by damped iterative proportional fitting
    on the expected counts ``E[q, a] = sum_m pi[m, q] [answers[m, q] = a]`` towards: every answer that occurs
    for text q equally often; every question type the same share of the samples, split equally between its
    texts. Where the images cannot supply that exactly it stops at the nearest point it reaches.
    Returns (M, k) template ids.
    """
    M, Q = answers.shape
    A = len(ANSWER_VOCAB)
    ok = answers >= 0
    flat = np.arange(Q)[None, :] * A + np.where(ok, answers, 0)  # (M, Q) index into logw.ravel()
    support = np.bincount(flat[ok], minlength=Q * A).reshape(Q, A) > 0
    text_share = np.array([1.0 / (len(QuestionType) * np.sum(_TEMPLATE_TYPE == _TEMPLATE_TYPE[q])) for q in range(Q)])
    logw = np.zeros((Q, A))
    for _ in range(iters):
        pi = _inclusion(np.where(ok, np.exp(logw.ravel()[flat]), 0.0), k)
        E = np.bincount(flat[ok], weights=pi[ok], minlength=Q * A).reshape(Q, A)
        mean_a = np.where(support, E, 0).sum(1) / np.maximum(support.sum(1), 1)
        logw += 0.5 * np.where(support, np.log(np.maximum(mean_a[:, None], 1e-12) / np.maximum(E, 1e-12)), 0)
        logw += 0.5 * np.log(text_share * M * k / np.maximum(E.sum(1), 1e-12))[:, None]
        logw = np.clip(logw - logw.max(), -30, 0)
    pi = _inclusion(np.where(ok, np.exp(logw.ravel()[flat]), 0.0), k)
    return _systematic_sample(pi, k, rng)


# ---------------------------------------------------------------- loading

_SPLIT_INDEX = {Split.TRAIN: 0, Split.VAL: 1, Split.TEST: 2}


def _as_split(split: str | Split) -> Split:
    try:
        return Split(split)
    except ValueError:
        raise ValueError(f"split={split!r} is invalid: use one of {[s.value for s in Split]}") from None


def generate_synthmed(split: str | Split, config: SynthMedConfig = SynthMedConfig()) -> SynthMedSplit:
    """Generate one split from scratch (no cache); deterministic in ``(config, split)``.

    Split s draws from ``SeedSequence([config.seed, i_s])`` (i = 0, 1, 2 for train, val, test), spawned into
    independent streams for the layouts, the rendering and the question choice.
    """
    split = _as_split(split)
    if not isinstance(config, SynthMedConfig):
        raise TypeError(f"config must be a SynthMedConfig, got {type(config).__name__}")
    S, c = config.image_size, config.image_size / 2
    n = {Split.TRAIN: config.n_train, Split.VAL: config.n_val, Split.TEST: config.n_test}[split]
    layout_rng, render_rng, q_rng = (np.random.default_rng(s) for s in
                                     np.random.SeedSequence([config.seed, _SPLIT_INDEX[split]]).spawn(3))
    counts = layout_rng.permutation(np.resize(np.arange(config.max_lesions + 1), n))  # balanced 0..max
    bodies, raw = zip(*(_layout(int(k), S, layout_rng) for k in counts))
    chunk = 512
    images = np.concatenate([_render(list(bodies[i:i + chunk]), list(raw[i:i + chunk]), config, render_rng)
                             for i in range(0, n, chunk)])[:, None]  # (M, 1, S, S)
    meta = []
    for ls in raw:
        lesions = tuple(Lesion(cx=l["cx"], cy=l["cy"], radius=l["r"], size=SIZES[l["size"]], shape=SHAPES[l["shape"]],
                               intensity=INTENSITIES[l["sign"]], contrast=l["contrast"],
                               quadrant=QUADRANTS[2 * int(l["cy"] >= c) + int(l["cx"] >= c)]) for l in ls)
        meta.append(ImageMeta(lesions=lesions, report=make_report(lesions)))
    answers = np.array([[_ANSWER_ID[a] if (a := t.answer(m.lesions)) is not None else -1 for t in QUESTION_TEMPLATES]
                        for m in meta], dtype=np.int64)  # (M, Q)
    chosen = _choose_questions(answers, config.questions_per_image, q_rng)  # (M, k)
    image_index = np.repeat(np.arange(n), config.questions_per_image)  # (N,) with N = M * k
    template_ids = chosen.reshape(-1)
    arrays = dict(images=images, image_index=image_index, question_ids=_TEMPLATE_TOKENS[template_ids],
                  answer_ids=answers[image_index, template_ids], question_type_ids=_TEMPLATE_TYPE[template_ids],
                  template_ids=template_ids, all_answer_ids=answers)
    for arr in arrays.values():
        arr.setflags(write=False)
    return SynthMedSplit(split=split, config=config, meta=tuple(meta), **arrays)


@functools.lru_cache(maxsize=8)
def _cached(split: Split, config: SynthMedConfig) -> SynthMedSplit:
    return generate_synthmed(split, config)


def load_synthmed(split: str | Split, config: SynthMedConfig = SynthMedConfig()) -> SynthMedSplit:
    """:func:`generate_synthmed`, memoized in memory per (split, config) (the last 8; arrays are read-only)."""
    if not isinstance(config, SynthMedConfig):
        raise TypeError(f"config must be a SynthMedConfig, got {type(config).__name__}")
    return _cached(_as_split(split), config)


# ---------------------------------------------------------------- metrics and the blind baseline

def accuracy_by_type(pred: np.ndarray, split: SynthMedSplit) -> tuple[float, dict[str, float]]:
    """Overall accuracy and accuracy per question type (types absent from the split are left out)."""
    pred = np.asarray(pred)
    hit = pred == split.answer_ids
    per = {t.name.lower(): float(hit[split.question_type_ids == t].mean())
           for t in QuestionType if np.any(split.question_type_ids == t)}
    return float(hit.mean()), per


@dataclass(frozen=True)
class BlindBaselineResult:
    """Question-only predictor scores on the evaluated split (fractions in [0, 1])."""

    accuracy: float
    per_type: Mapping[str, float]
    n: int


def blind_baseline(train: SynthMedSplit, test: SynthMedSplit) -> BlindBaselineResult:
    """Best image-free predictor: the most frequent train answer per exact question (token ids).

    A question never seen in train falls back to the most frequent answer of its question type, then overall.
    Ties break to the lower answer id.
    """
    A = len(ANSWER_VOCAB)
    keys, inv = np.unique(train.question_ids, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    table = np.zeros((len(keys), A), dtype=np.int64)
    np.add.at(table, (inv, train.answer_ids), 1)
    by_q = {k.tobytes(): int(np.argmax(row)) for k, row in zip(keys, table)}
    by_type = {}
    for t in QuestionType:
        sel = train.answer_ids[train.question_type_ids == t]
        if sel.size:
            by_type[int(t)] = int(np.argmax(np.bincount(sel, minlength=A)))
    overall = int(np.argmax(np.bincount(train.answer_ids, minlength=A)))
    pred = np.array([by_q.get(q.tobytes(), by_type.get(int(t), overall))
                     for q, t in zip(test.question_ids, test.question_type_ids)], dtype=np.int64)
    acc, per = accuracy_by_type(pred, test)
    return BlindBaselineResult(accuracy=acc, per_type=per, n=len(test))
