"""The binding factor of the synthetic data: neither stream alone reads it, both together do.

Readers here know exactly where the eight sites are, so they are as strong as a site-wise reader
can be: the face reader sees every frame on its own (colour and brightness around each site, the
mole's place) and pools over frames, as the face stream does; the flow reader sees the optical
flow around each site, as the motion stream does. Each reads its own half of the factor per site
(marks, twitches) almost perfectly, and the overlap not at all; their per-site product reads it.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest

from stages.preprocess.flow import clip_flow, make_estimator
from stages.preprocess.template import ARCFACE_112
from stages.sources.synthetic import (
    BINDING_FACTOR,
    BINDING_SITES,
    CANVAS,
    LANDMARK_TEMPLATE,
    LUMA,
    MARK_DIRECTION,
    N_SITES,
    SITE_GRID,
    SyntheticConfig,
    animate_face,
    build_rig,
    clip_motion,
    oracle_labels,
    overlap_moments,
    sample_design,
    split_sites,
)

CLIPS = 300
SAMPLE_FPS = 5  # the pipeline's frames.fps
ALIGNED = 112  # the aligned face, as align-faces writes it (faces.size, margin 0)
FLOW_SIZE = 56  # flow.size
WINDOW = 6  # half side of the window read around a site (aligned pixels)


def _to_aligned() -> np.ndarray:
    m, _ = cv2.estimateAffinePartial2D(LANDMARK_TEMPLATE * CANVAS, ARCFACE_112.astype(np.float32))
    return m


def _window(image: np.ndarray, x: float, y: float, half: int) -> np.ndarray:
    x0, y0 = round(x), round(y)
    return image[max(0, y0 - half) : y0 + half + 1, max(0, x0 - half) : x0 + half + 1]


def _clip_views(spec, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """The aligned faces (uint8 [T, 112, 112, 3]) at the pipeline's sampling rate, and their flow."""
    rig, motion = build_rig(spec, cfg), clip_motion(spec, cfg)
    step = cfg.fps // SAMPLE_FPS
    m = _to_aligned()
    faces = []
    for k in range(0, len(motion.mouth), step):
        canvas = animate_face(rig, float(motion.mouth[k]), float(motion.lids[k]), 15.0, motion.twitch[k])
        aligned = cv2.warpAffine(canvas, m, (ALIGNED, ALIGNED), flags=cv2.INTER_LINEAR)
        faces.append(np.clip(aligned * 255 + 0.5, 0, 255).astype(np.uint8))
    faces = np.stack(faces)
    flow = clip_flow(faces, make_estimator("farneback"), FLOW_SIZE, 4.0)
    return faces, flow.pixels()


def _face_features(faces: np.ndarray) -> np.ndarray:
    """Per site: chroma along the mark direction relative to the skin's (both per unit luma, so the
    skin tone cancels), luma, and the mole's offset from the template, each read in every frame
    alone and averaged over the frames. [N_SITES, 3]"""
    out = np.zeros((N_SITES, 3))
    for j, (x, y) in enumerate(BINDING_SITES.values()):
        per_frame = []
        for face in faces.astype(np.float64) / 255:
            skin = _window(face, ALIGNED / 2, ALIGNED * 0.6, ALIGNED // 3).reshape(-1, 3).mean(0)
            patch = _window(face, x, y, WINDOW)
            luma = patch @ LUMA
            chroma = (patch @ MARK_DIRECTION).mean() / luma.mean() - skin @ MARK_DIRECTION / (skin @ LUMA)
            dark = np.clip(luma.mean() - luma, 0, None)
            yy = np.arange(patch.shape[0])[:, None]
            centroid = (dark * yy).sum() / max(dark.sum(), 1e-9) - patch.shape[0] / 2
            per_frame.append([chroma, luma.mean(), abs(centroid)])
        out[j] = np.mean(per_frame, axis=0)
    return out


def _flow_features(flow: np.ndarray) -> np.ndarray:
    """Per site: mean vertical flow speed and its spread over time, around the site. [N_SITES, 2]"""
    scale = FLOW_SIZE / ALIGNED
    out = np.zeros((N_SITES, 2))
    for j, (x, y) in enumerate(BINDING_SITES.values()):
        speed = [np.abs(_window(f[..., 1], x * scale, y * scale, WINDOW // 2)).mean() for f in flow]
        out[j] = np.mean(speed), np.std(speed)
    return out


@pytest.fixture(scope="module")
def readings() -> dict:
    cfg = SyntheticConfig(n_train=CLIPS, n_val=0, n_test=0, seconds=4.0, fps=25)
    specs, _, factors = sample_design(cfg, seed=11)
    face, flow = [], []
    for spec in specs:
        faces, fields = _clip_views(spec, cfg)
        face.append(_face_features(faces))
        flow.append(_flow_features(fields))
    marks = np.zeros((CLIPS, N_SITES), bool)
    twitches = np.zeros((CLIPS, N_SITES), bool)
    for i, spec in enumerate(specs):
        marks[i, list(spec.mark_sites)] = True
        twitches[i, list(spec.twitch_sites)] = True
    return {
        "face": np.stack(face),
        "flow": np.stack(flow),
        "marks": marks,
        "twitches": twitches,
        "factors": factors,
    }


def _cv_r2(x: np.ndarray, y: np.ndarray, model) -> float:
    from sklearn.model_selection import KFold, cross_val_predict

    fit = cross_val_predict(model, x, y, cv=KFold(5, shuffle=True, random_state=0))
    return float(1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _auc(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per site: the area under the ROC curve of a score [clips, sites] for a property [clips, sites]."""
    from sklearn.metrics import roc_auc_score

    return np.array([roc_auc_score(positive[:, j], score[:, j]) for j in range(score.shape[1])])


def _gbm():
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=100, random_state=0)


def test_the_sites_fall_in_distinct_cells_of_the_token_grid():
    cells = {
        (int(y * SITE_GRID // ALIGNED), int(x * SITE_GRID // ALIGNED)) for x, y in BINDING_SITES.values()
    }
    assert len(cells) == N_SITES


def test_each_stream_reads_its_own_half_site_by_site(readings):
    assert _auc(readings["face"][..., 0], readings["marks"]).min() > 0.95
    assert _auc(readings["flow"][..., 0], readings["twitches"]).min() > 0.9
    # ... and not the other half: marks are invisible to flow, twitches to a single frame
    # (the mean over the eight sites; one site's AUC over 300 clips has an sd of about 0.035).
    for k in range(2):
        assert 0.43 < _auc(readings["flow"][..., k], readings["marks"]).mean() < 0.57
    for k in range(3):
        assert 0.43 < _auc(readings["face"][..., k], readings["twitches"]).mean() < 0.57


def test_neither_stream_alone_reads_the_overlap(readings):
    y = readings["factors"][BINDING_FACTOR].to_numpy()
    face_only = _cv_r2(readings["face"].reshape(CLIPS, -1), y, _gbm())
    flow_only = _cv_r2(readings["flow"].reshape(CLIPS, -1), y, _gbm())
    assert face_only <= 0.05, face_only
    assert flow_only <= 0.05, flow_only


def test_both_streams_site_by_site_read_the_overlap(readings):
    from sklearn.linear_model import LinearRegression

    y = readings["factors"][BINDING_FACTOR].to_numpy()

    def standard(v: np.ndarray) -> np.ndarray:
        return (v - v.mean(0)) / v.std(0)

    product = standard(readings["face"][..., 0]) * standard(readings["flow"][..., 0])
    assert _cv_r2(product, y, LinearRegression()) > 0.7
    # The same features, shuffled across sites for the flow: the place-to-place pairing is the signal.
    shifted = standard(readings["face"][..., 0]) * np.roll(standard(readings["flow"][..., 0]), 1, axis=1)
    assert _cv_r2(shifted, y, LinearRegression()) <= 0.05


def test_the_oracle_reads_the_overlap_exactly(readings):
    factors = readings["factors"]
    overlap = [
        len(set(split_sites(m)) & set(split_sites(t)))
        for m, t in zip(factors["mark_sites"], factors["twitch_sites"], strict=True)
    ]
    assert list(factors["overlap"]) == overlap
    assert list(factors["bound_sites"].map(split_sites).map(len)) == overlap
    cfg = SyntheticConfig()
    mean, sd = overlap_moments(cfg)
    np.testing.assert_allclose(factors[BINDING_FACTOR], (np.array(overlap) - mean) / sd)
    # The hypergeometric moments, against the drawn overlaps (300 clips).
    assert abs(np.mean(overlap) - mean) < 0.15 and abs(np.std(overlap) - sd) < 0.1


def test_neuroticism_follows_the_overlap_and_the_other_traits_ignore_it():
    cfg = SyntheticConfig(n_train=3000, n_val=0, n_test=0)
    _, _, factors = sample_design(cfg, seed=5)
    b = factors[BINDING_FACTOR].to_numpy()
    r = {
        c: abs(np.corrcoef(b, factors[f"oracle_{c}"])[0, 1])
        for c in ("openness", "extraversion", "neuroticism")
    }
    assert r["neuroticism"] > 0.65
    assert r["openness"] < 0.05 and r["extraversion"] < 0.05
    # Without the binding factor the neuroticism oracle loses most of its variance.
    flat = oracle_labels(factors.assign(**{BINDING_FACTOR: 0.0}), cfg.label_noise)["neuroticism"]
    assert np.var(flat) < 0.55 * np.var(factors["oracle_neuroticism"])


def test_the_binding_draws_leave_the_other_factors_unchanged():
    base = SyntheticConfig(n_train=50, n_val=0, n_test=0)
    _, _, with_binding = sample_design(base, seed=3)
    _, _, without = sample_design(replace(base, marked_sites=0, twitching_sites=0), seed=3)
    columns = ["clip", "s_tint", "s_shade", "d_mouth", "d_blink", "face_id", "oracle_openness"]
    pd.testing.assert_frame_equal(with_binding[columns], without[columns])
    assert (without["overlap"] == 0).all() and (without[BINDING_FACTOR] == 0).all()
