"""The perception ceiling of the known-answer data: the best an observer of the sampled frames could do.

The oracle knows the latent factors; the pipeline sees frames at `frames.fps`. Tint and shade are
visible in any frame and the overlap of marks and twitches in any few, so an ideal observer reads
them exactly; the speaking and blink rates it can
only estimate from the mouth and eyelid signals at the sampled instants, and a 6-s clip holds a
handful of blinks. The observer here is that: the two static factors, plus summary and spectral
features of the generator's own mouth and eyelid signals sampled as extract-frames samples the
video, read by a gradient-boosting regressor per label (scikit-learn) trained on a large simulated
training set from the same generator (its own seed stream, never the dataset's clips) and scored on
the dataset's validation and test clips. Its 1-MAE is the ceiling a model of the pipeline's inputs
can reach; evaluate reports the share of the baseline-to-ceiling gap a model closes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

from model.records import LABEL_COLUMNS, TRAITS
from stages.preprocess.video import TIME_TOLERANCE_S  # extract-frames' own timestamp tolerance
from stages.sources.synthetic import ClipSpec, SyntheticConfig, clip_motion, sample_design

# Simulated clips the observer learns from, and the offset of their seed stream from the dataset's.
SIMULATED_CLIPS = 3000
SIMULATION_SEED = 1_000_003
SPECTRUM_BINS = 16  # low-frequency magnitudes of the sampled signals (zero-padded to 64 samples)


def sampled_indices(n_frames: int, video_fps: float, sample_fps: float) -> np.ndarray:
    """The video frames extract-frames keeps: the first at or after each multiple of 1/sample_fps."""
    t = np.arange(n_frames) / video_fps
    wanted = np.arange(0.0, t[-1] + TIME_TOLERANCE_S, 1.0 / sample_fps) if n_frames else np.array([])
    return np.unique(np.searchsorted(t, wanted - TIME_TOLERANCE_S))


def signal_features(x: np.ndarray) -> np.ndarray:
    """Level, spread, mean step, crossings of the mean, and the low-frequency spectrum of a signal."""
    centred = x - x.mean()
    crossings = np.count_nonzero(np.diff(np.signbit(centred)))
    spectrum = np.abs(np.fft.rfft(centred, n=64))[:SPECTRUM_BINS]
    return np.concatenate([[x.mean(), x.std(), np.abs(np.diff(x)).mean(), crossings], spectrum])


def observer_features(specs: list[ClipSpec], cfg: SyntheticConfig, sample_fps: float) -> np.ndarray:
    """Per clip: the visible static factors and the features of its sampled mouth and eyelid signals."""
    rows = []
    for spec in specs:
        motion = clip_motion(spec, cfg)
        keep = sampled_indices(len(motion.mouth), cfg.fps, sample_fps)
        # The overlap of marks and twitches: every twitch moves its site by twitch_px, several
        # times between 5-fps samples' reach, so an observer of the sampled frames sees it exactly.
        overlap = len(set(spec.mark_sites) & set(spec.twitch_sites))
        static = [float(ndtr(spec.s_tint)), float(ndtr(spec.s_shade)), float(overlap)]
        rows.append(
            np.concatenate([static, signal_features(motion.mouth[keep]), signal_features(motion.lids[keep])])
        )
    return np.asarray(rows)


def perception_ceiling(
    cfg: SyntheticConfig, seed: int, sample_fps: float, simulated: int = SIMULATED_CLIPS
) -> dict[str, Any]:
    """1-MAE per label (and the mean over the five traits) of the ideal observer on the dataset's
    validation and test clips, beside the oracle's."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    sim_specs, sim_labels, _ = sample_design(
        replace(cfg, n_train=simulated, n_val=0, n_test=0), seed + SIMULATION_SEED
    )
    x_sim = observer_features(sim_specs, cfg, sample_fps)
    readers = {
        col: HistGradientBoostingRegressor(random_state=0).fit(x_sim, sim_labels[col].to_numpy())
        for col in LABEL_COLUMNS
    }
    specs, labels, factors = sample_design(cfg, seed)
    out: dict[str, Any] = {"sample_fps": sample_fps, "simulated_clips": simulated}
    for split in ("val", "test"):
        rows = np.flatnonzero(labels["split"].to_numpy() == split)
        if len(rows) == 0:
            continue
        x = observer_features([specs[i] for i in rows], cfg, sample_fps)
        truth = labels.iloc[rows]
        observer = {col: np.clip(readers[col].predict(x), 0, 1) for col in LABEL_COLUMNS}
        out[split] = _scores(truth, observer)
        out.setdefault("oracle", {})[split] = _scores(
            truth, {c: factors.iloc[rows][f"oracle_{c}"].to_numpy() for c in LABEL_COLUMNS}
        )
    return out


def _scores(truth: pd.DataFrame, pred: dict[str, np.ndarray]) -> dict[str, float]:
    acc = {c: float(1 - np.abs(truth[c].to_numpy() - pred[c]).mean()) for c in LABEL_COLUMNS}
    return {**acc, "mean": float(np.mean([acc[t] for t in TRAITS])), "clips": len(truth)}
