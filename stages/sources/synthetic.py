"""The embedded known-answer dataset: talking-head clips whose Big Five labels are known functions.

Real video cannot be downloaded everywhere, so `data.source: synthetic` makes clips in the real
layout (`videos/<split>/<clip>.mp4`, FI V2-shaped names such as `aB3_xYz9-Qw.002`) from latent
factors that the streams of the model must recover:

* Faces are real: the 100 LFW faces of `skimage.data.lfw_subset()` and the astronaut of
  `skimage.data.astronaut()` (face ids 0-99 and 100), grey, normalised in brightness and
  contrast, upscaled with cubic interpolation to a 128-px canvas, composited with a soft
  elliptical mask over a shoulder and a blurred background (crops of skimage images, gradients,
  smooth noise) and animated as a talking head: slow (0.1-0.3 Hz) translation (up to 4% of the
  frame), in-plane rotation (up to 4 degrees) and scale oscillation (up to 3%), whose amplitude
  (`head_motion`, 0.2-1) is a nuisance independent of every label.
* Static (appearance) factors, visible in any single frame:
  `s_tint`, skin tone from cool (bluish) to warm (reddish), which colourises the grey face;
  `s_shade`, the darkness of a beard-like shadow over jaw, chin and upper lip.
* Dynamic (motion) factors, visible only across frames, placed on the eyes and mouth so that
  they survive face alignment:
  `d_mouth`, the speaking rate: the jaw and lower lip drop with a smooth local displacement
  field and a dark mouth opening appears; the rate sets how fast the mouth opens and closes
  (0.35-1.8 Hz, below the Nyquist rate of 5-fps sampling) while the opening amplitude and its
  distribution over time are the same for every clip, so still frames carry no information on
  it and the mean optical flow around the mouth rises with it;
  `d_blink`, the blink rate (0.1-0.8 Hz): the upper lids slide down from the brows over both
  eyes (a local displacement field, so optical flow sees it) under a skin-coloured lid band,
  for `blink_seconds` (0.5 s, so 5-fps sampling sees two or three frames of each blink).
* A binding factor, readable only by relating the two streams place to place: eight skin sites
  (`BINDING_SITES`: forehead, cheeks and jaw, each the centre of its own cell of a 4x4 grid over
  the aligned face) all carry a small dark mole. Static chroma marks sit at exactly
  `marked_sites` of the eight (a blob shifting the colour along a direction of zero luma, so the
  grey images optical flow is computed on do not change), and twitches at exactly
  `twitching_sites` of them, drawn independently (the mole and the skin around it bob up and
  down at 0.8-1.6 Hz, so a single frame shows a mole, displaced a little, like every other). The
  overlap, the number of marked sites that twitch, is hypergeometric; its mean does not depend on
  which sites are marked or which twitch, so neither stream alone tells anything about it.
  `b_overlap` is the overlap standardised by the hypergeometric mean and sd.
* Eye and mouth positions come from a landmark template measured once with MTCNN on the
  upscaled LFW faces (mean of 100 faces; per-face spread about 5 px at 128 px), and the
  astronaut is warped onto the same template.

Faces and backdrops are shared out between the splits (`IDENTITY_SHARES`: 61/15/25 of the 101
faces, 8/2/3 of the 13 backdrops), so no person or background of a validation or test clip appears
in training: a score on test measures generalisation to new people, not recall of known ones.

The four appearance and motion factors are standard normals drawn independently of each other,
of the binding sites and of the nuisances (face id, background id, head-motion amplitude); a
factor reaches the picture through its normal CDF, so its visual effect is monotone and bounded.
Each trait's standardised score is a unit-norm combination of the features (s_tint, s_shade,
d_mouth, d_blink, s_tint*d_mouth, b_overlap) given in `TRAIT_WEIGHTS`:

* openness depends on static factors only (0.90 tint + 0.44 shade);
* extraversion depends on dynamic factors only (d_mouth);
* neuroticism is dominated by the binding factor b_overlap (56% of its variance) and the
  interaction s_tint*d_mouth (30%): only a model that relates where the face is marked to where
  it moves predicts it well;
* conscientiousness and agreeableness mix both streams;
* interview is a weighted sum of the five traits.

The oracle label is mean + sd_signal * score (clipped to [0, 1]); the label adds Gaussian noise
of sd `label_noise` (clipped to [0, 1]). Means are those of the real FI V2 training labels and
sd_signal = sqrt(sd_real^2 - label_noise^2), so the labels' sds match the real ones too.
Departure from the real data: the real traits correlate 0.58-0.88, but here openness and
extraversion are uncorrelated (each must depend on one stream only) and the other pairs
correlate 0.3-0.9 through the factors they share.

`generate_dataset` returns (labels, factors). labels: clip, split and the six label columns.
factors: clip, split, the four factors, the binding sites (mark_sites, twitch_sites, bound_sites:
site numbers joined by '|'; overlap; b_overlap), the nuisances (face_id, background_id,
head_motion), `oracle_<label>` for the six labels, and the physical rates they set (mouth_hz,
blink_hz).

Every clip is seeded from (seed, split, index within split), so the output is byte-identical for
a seed whatever the number of workers, and growing one split leaves the others unchanged.
"""

from __future__ import annotations

import logging
import math
import string
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import skimage.data
from scipy.special import ndtr

from model.atomic import atomic_path
from model.params import from_section, require
from model.records import LABEL_COLUMNS, SPLITS, TRAITS, Clip
from stages.common import ClipResult, resolve_workers, run_clips
from stages.preprocess.template import ARCFACE_112

log = logging.getLogger(__name__)

# Real FI V2 training labels (O, C, E, A, N, interview).
REAL_MEANS = dict(zip(LABEL_COLUMNS, (0.5663, 0.5227, 0.4761, 0.5482, 0.5203, 0.5038), strict=True))
REAL_SDS = dict(zip(LABEL_COLUMNS, (0.1470, 0.1552, 0.1523, 0.1364, 0.1535, 0.1501), strict=True))

STATIC_FACTORS = ("s_tint", "s_shade")
DYNAMIC_FACTORS = ("d_mouth", "d_blink")
FACTORS = (*STATIC_FACTORS, *DYNAMIC_FACTORS)
BINDING_FACTOR = "b_overlap"
FEATURES = (*FACTORS, "s_tint*d_mouth", BINDING_FACTOR)
NUISANCES = ("face_id", "background_id", "head_motion")

# Rows are normalised to unit length, so each standardised score has unit variance.
_RAW_WEIGHTS = {
    #                  tint  shade mouth blink tint*mouth overlap
    "openness": (0.90, 0.44, 0.00, 0.00, 0.00, 0.00),
    "conscientiousness": (0.45, 0.40, 0.35, 0.55, 0.00, 0.00),
    "extraversion": (0.00, 0.00, 1.00, 0.00, 0.00, 0.00),
    "agreeableness": (0.55, 0.20, 0.55, 0.30, 0.30, 0.00),
    "neuroticism": (0.30, 0.25, 0.30, 0.25, 0.80, 1.10),
}
# Interview as a weighted sum of the trait scores (O, C, E, A, N).
_INTERVIEW_FROM_TRAITS = (0.15, 0.30, 0.15, 0.20, 0.30)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _trait_weights() -> dict[str, np.ndarray]:
    w = {t: _unit(np.array(_RAW_WEIGHTS[t], float)) for t in TRAITS}
    w["interview"] = _unit(sum(b * w[t] for b, t in zip(_INTERVIEW_FROM_TRAITS, TRAITS, strict=True)))
    return w


TRAIT_WEIGHTS = _trait_weights()

# MTCNN's five landmarks on the LFW faces upscaled to a square canvas, as fractions of its side
# (left eye, right eye, nose, mouth left, mouth right, as seen in the image): mean of 100 faces.
LANDMARK_TEMPLATE = np.array(
    [[0.256, 0.354], [0.601, 0.339], [0.420, 0.545], [0.297, 0.728], [0.590, 0.717]], np.float32
)
# The astronaut's landmarks in skimage.data.astronaut() (512x512), found by MTCNN.
ASTRONAUT_LANDMARKS = np.array([[204, 100], [245, 102], [224, 126], [202, 139], [244, 140]], np.float32)
N_LFW_FACES = 100
N_FACES = N_LFW_FACES + 1
CANVAS = 128  # side of the face canvas in pixels
FACE_CENTRE = (0.43, 0.52)  # centre of the elliptical face mask, fractions of the canvas
FACE_AXES = (0.40, 0.50)  # its semi-axes

BACKGROUND_IMAGES = (
    "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "brick",
    "grass", "gravel", "page", "text", "moon", "colorwheel",
)  # fmt: skip
N_BACKGROUNDS = len(BACKGROUND_IMAGES) + 2  # then a two-colour gradient and smooth noise

WARM = np.array([1.12, 0.80, 0.60], np.float32)  # RGB gains of the warmest skin tone
COOL = np.array([0.80, 0.84, 1.04], np.float32)
MOUTH_COLOUR = np.array([0.22, 0.06, 0.06], np.float32)
# The binding sites in the aligned 112-px face (ArcFace template coordinates, x right, y down):
# each is the centre region of its own cell of a 4x4 grid over the aligned crop (28-px cells, so
# the 4x4 token grids of the model's streams can tell them apart), on skin, away from the eyes
# and the mouth. Left and right as seen in the image.
BINDING_SITES = {
    "forehead_left": (42.0, 24.0),  # cell (row 0, column 1)
    "forehead_right": (70.0, 24.0),  # (0, 2)
    "cheek_outer_left": (22.0, 72.0),  # (2, 0)
    "cheek_left": (42.0, 72.0),  # (2, 1)
    "cheek_right": (70.0, 72.0),  # (2, 2)
    "cheek_outer_right": (90.0, 72.0),  # (2, 3)
    "jaw_left": (24.0, 96.0),  # (3, 0)
    "jaw_right": (88.0, 96.0),  # (3, 3)
}
N_SITES = len(BINDING_SITES)
SITE_GRID = 4  # the sites' cells are those of a SITE_GRID x SITE_GRID grid over the aligned face
# A colour shift of zero luma (ITU-R BT.601 weights, as cv2's RGB2GRAY and the video encoder use):
# red and a little blue up, green down, a blush (a green one made MTCNN miss faces). Scaled by
# `mark_chroma`; a mark is this times a Gaussian blob.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
MARK_DIRECTION = np.array([0.4, -(0.299 * 0.4 + 0.114 * 0.1) / 0.587, 0.1], np.float32)
MARK_SIGMA = 0.045  # blob sd, fraction of the canvas
MOLE_SIGMA = 0.025  # the mole at every site
MOLE_DARKNESS = 0.25
TWITCH_SIGMA = 0.05  # sd of the skin patch a twitch moves
SITE_JITTER = 0.02  # each clip's sites move this much (uniform, fraction of the canvas) off the template
NAME_ALPHABET = string.ascii_letters + string.digits + "-_"
# Faces and backdrops are partitioned between the splits, so that the validation and test clips
# show people and backgrounds never seen in training: each split's share of the ids
# (of 101 faces: 61, 15, 25; of 13 backdrops: 8, 2, 3).
IDENTITY_SHARES = (("train", 0.6), ("val", 0.15), ("test", 0.25))


@dataclass(frozen=True)
class SyntheticConfig:
    """The `data.synthetic` params: dataset size, video format and the strength of each effect."""

    n_train: int = 400
    n_val: int = 100
    n_test: int = 200
    seconds: float = 6.0
    fps: int = 25
    size: int = 256  # frame side in pixels
    label_noise: float = 0.03
    face_scale: float = 0.5  # face canvas side as a fraction of the frame side
    mouth_hz_min: float = 0.35
    mouth_hz_max: float = 1.8
    mouth_open: float = 0.12  # widest mouth opening, fraction of the canvas
    blink_hz_min: float = 0.1
    blink_hz_max: float = 0.8
    blink_seconds: float = 0.5
    shade_max: float = 0.6  # darkening of the beard region at the top of s_shade
    marked_sites: int = 4  # binding factor: sites (of N_SITES) with a chroma mark
    twitching_sites: int = 4  # ... and sites that twitch, drawn independently of the marks
    mark_chroma: float = 0.1  # strength of a mark: peak shift of its colour (RGB in [0, 1]) at zero luma
    twitch_px: float = 3.0  # twitch amplitude in canvas pixels (the face canvas is CANVAS px)
    twitch_hz_min: float = 0.8  # twitch rates are uniform in [min, max]; keep max below frames.fps / 2
    twitch_hz_max: float = 1.6
    workers: int = 0  # 0: one per core

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> SyntheticConfig:
        c = from_section(cls, cfg, "data.synthetic")
        name = "data.synthetic"
        require(c.n_train >= 1, f"{name}.n_train", c.n_train, "a count >= 1")
        for key in ("n_val", "n_test", "workers"):
            require(getattr(c, key) >= 0, f"{name}.{key}", getattr(c, key), "a count >= 0")
        for key in ("seconds", "fps", "mouth_open", "blink_seconds", "mouth_hz_min", "blink_hz_min"):
            require(getattr(c, key) > 0, f"{name}.{key}", getattr(c, key), "a number > 0")
        require(c.size >= 64, f"{name}.size", c.size, "pixels >= 64")
        require(0 < c.face_scale <= 1, f"{name}.face_scale", c.face_scale, "a fraction in (0, 1]")
        require(
            c.mouth_hz_max > c.mouth_hz_min,
            f"{name}.mouth_hz_max",
            c.mouth_hz_max,
            "a rate above mouth_hz_min",
        )
        require(
            c.blink_hz_max > c.blink_hz_min,
            f"{name}.blink_hz_max",
            c.blink_hz_max,
            "a rate above blink_hz_min",
        )
        require(c.label_noise >= 0, f"{name}.label_noise", c.label_noise, "a standard deviation >= 0")
        require(0 <= c.shade_max <= 1, f"{name}.shade_max", c.shade_max, "a fraction in [0, 1]")
        for key in ("marked_sites", "twitching_sites"):
            value = getattr(c, key)
            require(0 <= value <= N_SITES, f"{name}.{key}", value, f"a count of sites in 0..{N_SITES}")
        for key in ("mark_chroma", "twitch_px"):
            require(getattr(c, key) >= 0, f"{name}.{key}", getattr(c, key), "a number >= 0")
        require(c.twitch_hz_min > 0, f"{name}.twitch_hz_min", c.twitch_hz_min, "a rate > 0")
        require(
            c.twitch_hz_max >= c.twitch_hz_min,
            f"{name}.twitch_hz_max",
            c.twitch_hz_max,
            "a rate at or above twitch_hz_min",
        )
        return c

    def count(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip: its name, split, seed and the factors it shows."""

    clip: str
    split: str
    seed: tuple[int, int, int]
    s_tint: float
    s_shade: float
    d_mouth: float
    d_blink: float
    face_id: int
    background_id: int
    head_motion: float
    mark_sites: tuple[int, ...] = ()  # indices into BINDING_SITES
    twitch_sites: tuple[int, ...] = ()


# ---------------------------------------------------------------- factors and labels


def _clip_rng(clip_seed: tuple[int, int, int], stream: int) -> np.random.Generator:
    """Independent random streams of one clip: 0 factors, 1 label noise, 2 motion, 3 backdrop,
    4 the binding sites, 5 the sites' jitter and twitch timing."""
    return np.random.default_rng([*clip_seed, stream])


def _clip_name(rng: np.random.Generator) -> str:
    chars = rng.choice(list(NAME_ALPHABET), 11)
    return f"{''.join(chars)}.{int(rng.integers(0, 6)):03d}"


def identity_pools(n: int, seed: int) -> dict[str, np.ndarray]:
    """The ids 0..n-1 (faces or backdrops) shared out between the splits by IDENTITY_SHARES, in an
    order drawn from the seed: no id belongs to two splits."""
    order = np.random.default_rng([seed, 7919, n]).permutation(n)
    cuts = np.round(np.cumsum([share for _, share in IDENTITY_SHARES]) * n).astype(int)
    starts = [0, *cuts[:-1]]
    return {split: order[a:b] for (split, _), a, b in zip(IDENTITY_SHARES, starts, cuts, strict=True)}


def sample_specs(cfg: SyntheticConfig, seed: int) -> list[ClipSpec]:
    """Draw every clip's name, factors and nuisances, each from its own (seed, split, index); its
    face and backdrop come from its split's pools (identity_pools)."""
    specs = []
    faces, backdrops = identity_pools(N_FACES, seed), identity_pools(N_BACKGROUNDS, seed)
    for split in SPLITS:
        for i in range(cfg.count(split)):
            clip_seed = (seed, SPLITS.index(split), i)
            rng = _clip_rng(clip_seed, 0)
            z = rng.standard_normal(len(FACTORS))
            specs.append(
                ClipSpec(
                    clip=_clip_name(rng),
                    split=split,
                    seed=clip_seed,
                    **{f: float(v) for f, v in zip(FACTORS, z, strict=True)},
                    face_id=int(faces[split][rng.integers(len(faces[split]))]),
                    background_id=int(backdrops[split][rng.integers(len(backdrops[split]))]),
                    head_motion=float(rng.uniform(0.2, 1.0)),
                    **binding_sites(cfg, _clip_rng(clip_seed, 4)),
                )
            )
    names = [s.clip for s in specs]
    if len(set(names)) != len(names):
        raise RuntimeError("clip names collide; choose another seed")
    return specs


def binding_sites(cfg: SyntheticConfig, rng: np.random.Generator) -> dict[str, tuple[int, ...]]:
    """The marked and the twitching sites of a clip: two independent draws without replacement."""
    marks = rng.choice(N_SITES, cfg.marked_sites, replace=False)
    twitches = rng.choice(N_SITES, cfg.twitching_sites, replace=False)
    return {
        "mark_sites": tuple(sorted(int(i) for i in marks)),
        "twitch_sites": tuple(sorted(int(i) for i in twitches)),
    }


def overlap_moments(cfg: SyntheticConfig) -> tuple[float, float]:
    """Mean and sd of the overlap: hypergeometric, twitching_sites draws from N_SITES of which
    marked_sites are marked."""
    n, k, m = N_SITES, cfg.marked_sites, cfg.twitching_sites
    mean = m * k / n
    var = m * (k / n) * ((n - k) / n) * ((n - m) / (n - 1)) if n > 1 else 0.0
    return mean, math.sqrt(var)


def join_sites(sites: tuple[int, ...]) -> str:
    return "|".join(str(i) for i in sites)


def split_sites(text: Any) -> tuple[int, ...]:
    """The inverse of join_sites (factors.csv stores site lists as '0|3|5'; an empty list may read
    back as NaN)."""
    if not isinstance(text, str) or not text:
        return ()
    return tuple(int(i) for i in text.split("|"))


def feature_matrix(factors: pd.DataFrame) -> np.ndarray:
    """The features the labels are linear in: the four factors, the s_tint*d_mouth product and
    the binding factor."""
    f = factors[list(FACTORS)].to_numpy(float)
    return np.column_stack([f, f[:, 0] * f[:, 2], factors[BINDING_FACTOR].to_numpy(float)])


def oracle_labels(factors: pd.DataFrame, label_noise: float) -> pd.DataFrame:
    """The noise-free labels from the true factors (columns LABEL_COLUMNS, values in [0, 1])."""
    x = feature_matrix(factors)
    out = {}
    for col in LABEL_COLUMNS:
        sd = math.sqrt(max(REAL_SDS[col] ** 2 - label_noise**2, 0.0))
        out[col] = np.clip(REAL_MEANS[col] + sd * (x @ TRAIT_WEIGHTS[col]), 0.0, 1.0)
    return pd.DataFrame(out, index=factors.index)


def sample_design(cfg: SyntheticConfig, seed: int) -> tuple[list[ClipSpec], pd.DataFrame, pd.DataFrame]:
    """The clips to render, their labels and their factors, without rendering anything."""
    specs = sample_specs(cfg, seed)
    factors = pd.DataFrame([{k: v for k, v in asdict(s).items() if k != "seed"} for s in specs])
    mean, sd = overlap_moments(cfg)
    bound = [tuple(sorted(set(s.mark_sites) & set(s.twitch_sites))) for s in specs]
    factors["mark_sites"] = [join_sites(s.mark_sites) for s in specs]
    factors["twitch_sites"] = [join_sites(s.twitch_sites) for s in specs]
    factors["bound_sites"] = [join_sites(b) for b in bound]
    factors["overlap"] = [len(b) for b in bound]
    factors[BINDING_FACTOR] = (factors["overlap"] - mean) / sd if sd > 0 else 0.0
    oracle = oracle_labels(factors, cfg.label_noise)
    noise = np.stack([_clip_rng(s.seed, 1).standard_normal(len(LABEL_COLUMNS)) for s in specs])
    labels = factors[["clip", "split"]].copy()
    for j, col in enumerate(LABEL_COLUMNS):
        labels[col] = np.clip(oracle[col].to_numpy() + cfg.label_noise * noise[:, j], 0.0, 1.0)
        factors[f"oracle_{col}"] = oracle[col]
    factors["mouth_hz"] = _lerp(cfg.mouth_hz_min, cfg.mouth_hz_max, factors["d_mouth"])
    factors["blink_hz"] = _lerp(cfg.blink_hz_min, cfg.blink_hz_max, factors["d_blink"])
    return specs, labels, factors


def _lerp(lo: float, hi: float, z: Any) -> Any:
    return lo + (hi - lo) * ndtr(z)


# ---------------------------------------------------------------- faces and backgrounds


@cache
def _face_mask() -> np.ndarray:
    yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float32) / CANVAS
    r = ((xx - FACE_CENTRE[0]) / FACE_AXES[0]) ** 2 + ((yy - FACE_CENTRE[1]) / FACE_AXES[1]) ** 2
    mask = (r <= 1.0).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), CANVAS * 0.03)


@cache
def face_canvas(face_id: int) -> np.ndarray:
    """A grey face (float32 [CANVAS, CANVAS] in [0, 1]) with normalised brightness and contrast."""
    if face_id < N_LFW_FACES:
        small = skimage.data.lfw_subset()[face_id].astype(np.float32)
        grey = cv2.resize(small, (CANVAS, CANVAS), interpolation=cv2.INTER_CUBIC)
    else:
        astro = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
        m, _ = cv2.estimateAffinePartial2D(ASTRONAUT_LANDMARKS, LANDMARK_TEMPLATE * CANVAS)
        grey = cv2.warpAffine(
            astro, m, (CANVAS, CANVAS), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
        )
    inside = _face_mask() > 0.5
    mu, sd = grey[inside].mean(), grey[inside].std() + 1e-6
    return np.clip((grey - mu) / sd * 0.16 + 0.55, 0.0, 1.0).astype(np.float32)


@cache
def _background_source(name: str) -> np.ndarray:
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def background(background_id: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A blurred, low-contrast backdrop (float32 [size, size, 3] in [0, 1]) with a shoulder."""
    if background_id < len(BACKGROUND_IMAGES):
        src = _background_source(BACKGROUND_IMAGES[background_id])
        h, w = src.shape[:2]
        side = int(rng.uniform(0.5, 1.0) * min(h, w))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        bg = cv2.resize(src[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=cv2.INTER_AREA)
        bg = bg.astype(np.float32) / 255
    elif background_id == len(BACKGROUND_IMAGES):
        a, b = rng.uniform(0.1, 0.9, (2, 3)).astype(np.float32)
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        bg = np.broadcast_to(a + (b - a) * t, (size, size, 3))
        if rng.random() < 0.5:
            bg = bg.transpose(1, 0, 2)
    else:
        coarse = rng.uniform(0.1, 0.9, (6, 6, 3)).astype(np.float32)
        bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    bg = cv2.GaussianBlur(np.ascontiguousarray(bg, np.float32), (0, 0), size * 0.008)
    bg = 0.6 * bg + 0.4 * bg.mean()  # low contrast: nothing in the backdrop competes with the face
    shirt = tuple(float(c) for c in rng.uniform(0.05, 0.7, 3))
    cv2.ellipse(bg, (size // 2, int(size * 1.06)), (int(size * 0.42), int(size * 0.3)), 0, 0, 360, shirt, -1)
    return np.clip(bg, 0.0, 1.0)


# ---------------------------------------------------------------- animation


@dataclass(frozen=True)
class Motion:
    """Per-frame animation signals of a clip, each sampled at the video frame rate."""

    mouth: np.ndarray  # opening in [0, 1]
    lids: np.ndarray  # eyelid closure in [0, 1]
    affine: np.ndarray  # [T, 2, 3] canvas -> frame
    twitch: np.ndarray  # [T, twitching sites] downward displacement of each twitching site (pixels)


def mouth_signal(t: np.ndarray, hz: float, rng: np.random.Generator) -> np.ndarray:
    """Mouth opening in [0, 1]: open-close cycles at about `hz` with a slowly wandering rate."""
    wander = 1.0 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.1, 0.2) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * hz * np.cumsum(wander) * (t[1] - t[0] if len(t) > 1 else 0.0)
    return 0.5 * (1 - np.cos(phase + rng.uniform(0, 2 * np.pi)))


def blink_signal(t: np.ndarray, hz: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure in [0, 1]: blinks of `seconds` at about `hz`, with jittered spacing."""
    period = 1.0 / hz
    starts, s = [], rng.uniform(-seconds, period)
    while s < t[-1] + seconds:
        starts.append(s)
        s += period * rng.uniform(0.8, 1.2)
    closure = np.zeros_like(t)
    for s in starts:
        u = (t - s) / seconds
        inside = (u >= 0) & (u <= 1)
        closure[inside] = np.maximum(closure[inside], np.minimum(1.0, 1.4 * np.sin(np.pi * u[inside]) ** 2))
    return closure


def head_affines(
    t: np.ndarray, amplitude: float, size: int, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Canvas-to-frame similarity transforms of a slowly swaying, nodding head ([T, 2, 3])."""
    freq = rng.uniform(0.1, 0.3, 4)
    ph = rng.uniform(0, 2 * np.pi, 4)
    waves = np.sin(2 * np.pi * freq[:, None] * t[None] + ph[:, None])  # (4, T)
    cx = size * (0.5 + 0.04 * amplitude * waves[0])
    cy = size * (0.44 + 0.025 * amplitude * waves[1])
    angle = 4.0 * amplitude * waves[2]
    zoom = scale * (1 + 0.03 * amplitude * waves[3])
    centre = (FACE_CENTRE[0] * CANVAS, FACE_CENTRE[1] * CANVAS)
    out = np.empty((len(t), 2, 3), np.float64)
    for k in range(len(t)):
        m = cv2.getRotationMatrix2D(centre, float(angle[k]), float(zoom[k]))
        m[:, 2] += (cx[k] - centre[0], cy[k] - centre[1])
        out[k] = m
    return out


def clip_motion(spec: ClipSpec, cfg: SyntheticConfig) -> Motion:
    """The clip's mouth, eyelid and head signals, from its own random stream."""
    rng = _clip_rng(spec.seed, 2)
    t = np.arange(round(cfg.seconds * cfg.fps)) / cfg.fps
    mouth = mouth_signal(t, float(_lerp(cfg.mouth_hz_min, cfg.mouth_hz_max, spec.d_mouth)), rng)
    lids = blink_signal(
        t, float(_lerp(cfg.blink_hz_min, cfg.blink_hz_max, spec.d_blink)), cfg.blink_seconds, rng
    )
    scale = cfg.face_scale * cfg.size / CANVAS
    affine = head_affines(t, spec.head_motion, cfg.size, scale, rng)
    timing = _clip_rng(spec.seed, 5)
    timing.uniform(size=(N_SITES, 2))  # the sites' jitter (site_positions) comes first in this stream
    k = len(spec.twitch_sites)
    hz = timing.uniform(cfg.twitch_hz_min, cfg.twitch_hz_max, k)
    phase = timing.uniform(0, 2 * np.pi, k)
    twitch = cfg.twitch_px * np.sin(2 * np.pi * hz[None] * t[:, None] + phase[None])
    return Motion(mouth, lids, affine, twitch.reshape(len(t), k))


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True)
class FaceRig:
    """A clip's coloured face texture and the precomputed fields that animate it."""

    texture: np.ndarray  # float32 [CANVAS, CANVAS, 3]
    lid_colour: np.ndarray  # float32 [3]
    eye_dist: np.ndarray  # float32 [CANVAS, CANVAS]: normalised elliptical distance to the nearer eye
    eye_top: np.ndarray  # float32 [CANVAS, CANVAS]: 0 at the top of the eye ellipse, 1 at its bottom
    eye_box: tuple[slice, slice]  # rows and columns holding both eye ellipses (eye_dist <= 1)
    jaw_drop: np.ndarray  # float32 [CANVAS, CANVAS]: downward displacement per unit opening (pixels)
    lid_drop: np.ndarray  # float32 [CANVAS, CANVAS]: downward displacement per unit eyelid closure
    mouth_centre: tuple[float, float]
    mouth_half_width: float
    twitch_fields: np.ndarray  # float32 [twitching sites, CANVAS, CANVAS]: displacement per pixel of twitch
    marks: np.ndarray  # float32 [CANVAS, CANVAS, 3]: the chroma marks, added after every warp


@cache
def site_template() -> np.ndarray:
    """The binding sites on the face canvas [N_SITES, 2]: BINDING_SITES carried from the aligned
    face to the canvas by the similarity that maps the aligned landmarks onto LANDMARK_TEMPLATE."""
    m, _ = cv2.estimateAffinePartial2D(ARCFACE_112.astype(np.float32), LANDMARK_TEMPLATE * CANVAS)
    points = np.array(list(BINDING_SITES.values()), np.float32)[None]
    return cv2.transform(points, m)[0].astype(np.float32)


def site_positions(spec: ClipSpec) -> np.ndarray:
    """This clip's sites on the canvas: the template jittered a little (stream 5), so a mole's
    place in one frame says nothing about whether it twitches."""
    jitter = _clip_rng(spec.seed, 5).uniform(-1, 1, (N_SITES, 2)) * SITE_JITTER * CANVAS
    return site_template() + jitter.astype(np.float32)


def _blob(xx: np.ndarray, yy: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (sigma * CANVAS) ** 2)


def build_rig(spec: ClipSpec, cfg: SyntheticConfig) -> FaceRig:
    """Colourise the face by s_tint, shade the beard region by s_shade, and lay out eyes and mouth."""
    lm = LANDMARK_TEMPLATE * CANVAS
    yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float32)
    grey = face_canvas(spec.face_id)
    (mx, my), hw = lm[3:].mean(0), float(np.linalg.norm(lm[4] - lm[3]) / 2)

    beard = ((xx - mx) / (0.34 * CANVAS)) ** 2 + ((yy - 0.86 * CANVAS) / (0.24 * CANVAS)) ** 2 <= 1
    beard = cv2.GaussianBlur(beard.astype(np.float32), (0, 0), 0.04 * CANVAS)
    grey = grey * (1 - cfg.shade_max * float(ndtr(spec.s_shade)) * beard)
    sites = site_positions(spec)
    for centre in sites:  # a mole at every site: the texture a twitch moves, the same whatever the labels
        grey = grey * (1 - MOLE_DARKNESS * _blob(xx, yy, centre, MOLE_SIGMA))
    marks = sum((_blob(xx, yy, sites[i], MARK_SIGMA) for i in spec.mark_sites), np.zeros_like(xx))
    fields = [_blob(xx, yy, sites[i], TWITCH_SIGMA) for i in spec.twitch_sites]
    twitch_fields = np.stack(fields) if fields else np.zeros((0, CANVAS, CANVAS), np.float32)
    tone = COOL + (WARM - COOL) * float(ndtr(spec.s_tint))
    texture = np.clip(grey[..., None] * tone, 0.0, 1.0).astype(np.float32)

    ax, ay = 0.10 * CANVAS, 0.055 * CANVAS
    dists = [((xx - ex) / ax) ** 2 + ((yy - ey) / ay) ** 2 for ex, ey in lm[:2]]
    nearer = np.argmin(np.stack(dists), axis=0)
    eye_y = np.where(nearer == 0, lm[0, 1], lm[1, 1])
    eye_top = (yy - (eye_y - ay)) / (2 * ay)
    cheek = float(np.median(grey[int(lm[2, 1]) : int(lm[3, 1]), int(lm[0, 0]) : int(lm[1, 0])]))
    # The upper lid slides down from the brow to the bottom of the eye, so that flow sees a blink.
    lid_drop = np.zeros_like(xx)
    for ex, ey in lm[:2]:
        rise = np.clip((yy - (ey - 2.2 * ay)) / (3.2 * ay), 0, 1)
        fall = np.clip(1 - (yy - (ey + ay)) / (0.5 * ay), 0, 1)
        lid_drop += 2 * ay * np.exp(-0.5 * ((xx - ex) / (0.9 * ax)) ** 2) * np.minimum(rise, fall)

    across = np.exp(-0.5 * ((xx - mx) / (1.1 * hw)) ** 2)
    below = np.clip((yy - my + 0.01 * CANVAS) / (0.03 * CANVAS), 0, 1)
    fade = np.clip(1 - (yy - 0.88 * CANVAS) / (0.2 * CANVAS), 0.3, 1)
    jaw_drop = cfg.mouth_open * CANVAS * across * below * fade
    return FaceRig(
        texture=texture,
        lid_colour=(tone * cheek * 0.92).astype(np.float32),
        eye_dist=np.minimum(*dists).astype(np.float32),
        eye_box=_nonzero_box(np.minimum(*dists) <= 1.0),
        eye_top=eye_top.astype(np.float32),
        jaw_drop=jaw_drop.astype(np.float32),
        lid_drop=lid_drop.astype(np.float32),
        mouth_centre=(float(mx), float(my)),
        mouth_half_width=hw,
        twitch_fields=twitch_fields.astype(np.float32),
        marks=(cfg.mark_chroma * marks[..., None] * MARK_DIRECTION).astype(np.float32),
    )


def _nonzero_box(weights: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns of the smallest box holding every non-zero weight."""
    x, y, w, h = cv2.boundingRect((weights != 0).astype(np.uint8))
    return slice(y, y + h), slice(x, x + w)


@cache
def _canvas_grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates x, y of the face canvas (float32 [CANVAS, CANVAS] each), read-only."""
    yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float32)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


def animate_face(
    rig: FaceRig, mouth: float, lids: float, opening_px: float, twitch: np.ndarray | None = None
) -> np.ndarray:
    """The face texture with the jaw dropped by `mouth`, the eyelids `lids` closed, the twitching
    sites moved down by `twitch` pixels each, and the chroma marks on top."""
    xx, yy = _canvas_grid()
    drop = mouth * rig.jaw_drop + lids * rig.lid_drop
    if twitch is not None and len(twitch):
        drop = drop + np.tensordot(twitch.astype(np.float32), rig.twitch_fields, axes=1)
    face = cv2.remap(rig.texture, xx, yy - drop, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gap = mouth * opening_px
    if gap >= 0.5:
        mx, my = rig.mouth_centre
        hole = np.zeros((CANVAS, CANVAS), np.float32)
        axes = (max(1, round(0.85 * rig.mouth_half_width)), max(1, round(gap / 2)))
        cv2.ellipse(hole, (round(mx), round(my + gap / 2)), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        # Blends below run only where their weight is non-zero: elsewhere they give the face back.
        box = _nonzero_box(hole)
        a = hole[box][..., None]
        face[box] = face[box] * (1 - a) + MOUTH_COLOUR * a
    if lids > 0.02:
        box = rig.eye_box
        inside, top = rig.eye_dist[box] <= 1.0, rig.eye_top[box]
        edge = np.clip((lids - top) * 6.0, 0, 1) * inside * 0.7  # soft lid edge over the slide
        lash = np.clip(1 - np.abs(lids - top) * 12.0, 0, 1) * inside * 0.6
        lid = rig.lid_colour * (1 - 0.7 * lash[..., None])
        face[box] = face[box] * (1 - edge[..., None]) + lid * edge[..., None]
    # The marks stay where they are while the skin under them twitches: they are paint, not skin.
    return np.clip(face + rig.marks, 0.0, 1.0).astype(np.float32)


def render_frames(spec: ClipSpec, cfg: SyntheticConfig) -> np.ndarray:
    """All frames of a clip, uint8 RGB [T, size, size, 3]."""
    rig = build_rig(spec, cfg)
    motion = clip_motion(spec, cfg)
    bg = background(spec.background_id, cfg.size, _clip_rng(spec.seed, 3))
    mask = _face_mask()
    dsize = (cfg.size, cfg.size)
    # Outside the warped canvas the face and its mask are exactly 0, so a pixel there is the
    # backdrop's: blend only inside the canvas's bounding box (the same arithmetic, a quarter of it).
    backdrop = np.clip(bg * 255 + 0.5, 0, 255).astype(np.uint8)
    frames = np.repeat(backdrop[None], len(motion.mouth), axis=0)
    opening = cfg.mouth_open * CANVAS
    boxes = _canvas_boxes(motion.affine, cfg.size)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        face = animate_face(rig, float(motion.mouth[k]), float(motion.lids[k]), opening, motion.twitch[k])
        m = motion.affine[k]
        warped = cv2.warpAffine(face, m, dsize, flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, m, dsize, flags=cv2.INTER_LINEAR)[y0:y1, x0:x1, None]
        inner = bg[y0:y1, x0:x1]
        # (bg + alpha * (face - bg)) * 255 + 0.5, in place, the same operations in the same order
        blend = warped[y0:y1, x0:x1] - inner
        blend *= alpha
        blend += inner
        blend *= 255
        blend += 0.5
        frames[k, y0:y1, x0:x1] = np.clip(blend, 0, 255, out=blend)
    return frames


def _canvas_boxes(affines: np.ndarray, size: int) -> np.ndarray:
    """Per frame, rows y0:y1 and columns x0:x1 (int [T, 4]) of a size x size frame that hold every
    pixel the face canvas, warped by that frame's affine, reaches: bilinear sampling reads the canvas
    for source points in (-1, CANVAS) on each axis; its corners are mapped and the box widened by a
    pixel for OpenCV's fixed-point maths."""
    corners = np.array([[-1, -1], [CANVAS, -1], [-1, CANVAS], [CANVAS, CANVAS]], np.float64)
    mapped = np.einsum("tij,cj->tci", affines[:, :, :2], corners) + affines[:, None, :, 2]  # [T, 4, 2]
    low, high = np.floor(mapped.min(1)) - 1, np.ceil(mapped.max(1)) + 2
    boxes = np.stack([low[:, 1], high[:, 1], low[:, 0], high[:, 0]], axis=1)
    return np.clip(boxes, 0, size).astype(np.int64)


def write_video(frames: np.ndarray, path: Path, fps: float) -> None:
    """Encode RGB frames as MPEG-4 Part 2 ('mp4v'), atomically."""
    h, w = frames.shape[1:3]
    with atomic_path(path, keep_suffix=True) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write {tmp}")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()


# ---------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class RenderJob:
    """What every rendering worker needs: each clip's spec, the config and the output root."""

    specs: dict[str, ClipSpec]
    cfg: SyntheticConfig
    out_root: Path


def _render_one(clip: Clip, job: RenderJob) -> ClipResult:
    # No cv2.setNumThreads here: in a forked worker it can deadlock on the parent's thread pool.
    spec, cfg = job.specs[clip.name], job.cfg
    write_video(render_frames(spec, cfg), clip.path(job.out_root / "videos", ".mp4"), cfg.fps)
    return ClipResult(clip.name, clip.split, "done")


def generate_dataset(cfg: dict, seed: int, out_root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Render every clip to out_root/videos/<split>/<clip>.mp4; return (labels, factors)."""
    conf = SyntheticConfig.from_params(cfg)
    specs, labels, factors = sample_design(conf, seed)
    clips = [Clip(s.clip, s.split) for s in specs]
    workers = resolve_workers(conf.workers)
    log.info("rendering %d synthetic clips with %d workers", len(clips), workers)
    results = run_clips(
        _render_one,
        clips,
        workers,
        "synthetic",
        RenderJob({s.clip: s for s in specs}, conf, Path(out_root)),
    )
    failed = [f"{r.split}/{r.clip}: {r.reason}" for r in results if r.status != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} synthetic clips failed: {failed[:3]}")
    return labels, factors
