"""The synthetic dataset: deterministic, documented label dependence, decodable, detectable faces."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from benchmarks.render import reference_frames
from model.config import ConfigError
from model.records import LABEL_COLUMNS, SPLITS, TRAITS
from stages.common import file_digest
from stages.sources.synthetic import (
    CANVAS,
    DYNAMIC_FACTORS,
    FACTORS,
    N_BACKGROUNDS,
    N_FACES,
    NUISANCES,
    REAL_MEANS,
    REAL_SDS,
    STATIC_FACTORS,
    SyntheticConfig,
    clip_motion,
    generate_dataset,
    identity_pools,
    render_frames,
    sample_design,
)

TINY = {"n_train": 3, "n_val": 2, "n_test": 2, "seconds": 1.0, "fps": 10, "size": 128, "workers": 1}
NAME = re.compile(r"^[A-Za-z0-9_-]{11}\.\d{3}$")


def _design(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = SyntheticConfig(n_train=n, n_val=0, n_test=0)
    _, labels, factors = sample_design(cfg, seed)
    return labels, factors


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    design = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    return 1 - resid.var() / y.var()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic")
    labels, factors = generate_dataset(TINY, seed=7, out_root=root)
    return root, labels, factors


def test_layout_names_and_columns(tiny_dataset):
    root, labels, factors = tiny_dataset
    assert list(labels.columns) == ["clip", "split", *LABEL_COLUMNS]
    for col in ("clip", "split", *FACTORS, *NUISANCES, *(f"oracle_{c}" for c in LABEL_COLUMNS)):
        assert col in factors.columns
    assert (labels["clip"] == factors["clip"]).all()
    assert labels["split"].value_counts().to_dict() == {"train": 3, "val": 2, "test": 2}
    assert all(NAME.match(c) for c in labels["clip"])
    assert labels["clip"].is_unique
    found = sorted(p.relative_to(root / "videos").as_posix() for p in (root / "videos").rglob("*.mp4"))
    assert found == sorted(f"{s}/{c}.mp4" for c, s in zip(labels["clip"], labels["split"], strict=True))
    assert not list(root.rglob("*.partial*"))


def test_videos_decode_with_the_configured_format(tiny_dataset):
    root, labels, _ = tiny_dataset
    for clip, split in zip(labels["clip"], labels["split"], strict=True):
        cap = cv2.VideoCapture(str(root / "videos" / split / f"{clip}.mp4"))
        assert cap.isOpened()
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(TINY["fps"])
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (128, 128)
        n = 0
        while cap.read()[0]:
            n += 1
        cap.release()
        assert n == round(TINY["seconds"] * TINY["fps"])


def test_same_seed_same_bytes_whatever_the_workers(tiny_dataset, tmp_path):
    root, labels, factors = tiny_dataset
    again, factors2 = generate_dataset({**TINY, "workers": 2}, seed=7, out_root=tmp_path)
    pd.testing.assert_frame_equal(labels, again)
    pd.testing.assert_frame_equal(factors, factors2)
    assert labels.to_csv(index=False).encode() == again.to_csv(index=False).encode()
    for path in (root / "videos").rglob("*.mp4"):
        assert file_digest(path) == file_digest(tmp_path / path.relative_to(root))


def test_different_seed_differs():
    _, a, _ = sample_design(SyntheticConfig(**TINY), 7)
    specs_b, b, _ = sample_design(SyntheticConfig(**TINY), 8)
    assert set(a["clip"]).isdisjoint(b["clip"])
    assert not np.allclose(a[list(LABEL_COLUMNS)], b[list(LABEL_COLUMNS)])
    specs_a, _, _ = sample_design(SyntheticConfig(**TINY), 7)
    cfg = SyntheticConfig(**TINY)
    assert not np.array_equal(render_frames(specs_a[0], cfg), render_frames(specs_b[0], cfg))


def test_growing_one_split_keeps_the_others():
    _, small, _ = sample_design(SyntheticConfig(**TINY), 3)
    _, big, _ = sample_design(SyntheticConfig(**{**TINY, "n_train": 6}), 3)
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(
            small[small.split == split].reset_index(drop=True), big[big.split == split].reset_index(drop=True)
        )


def test_static_trait_follows_static_factors_only():
    labels, factors = _design(2000)
    static, dynamic = factors[list(STATIC_FACTORS)].to_numpy(), factors[list(DYNAMIC_FACTORS)].to_numpy()
    assert _r2(static, labels["openness"].to_numpy()) > 0.9
    assert _r2(dynamic, labels["openness"].to_numpy()) < 0.01
    assert _r2(dynamic, labels["extraversion"].to_numpy()) > 0.9
    assert _r2(static, labels["extraversion"].to_numpy()) < 0.01


def test_neuroticism_needs_both_streams():
    labels, factors = _design(2000)
    f = factors[list(FACTORS)].to_numpy()
    n = labels["neuroticism"].to_numpy()
    product = (factors["s_tint"] * factors["d_mouth"]).to_numpy()
    binding = factors["b_overlap"].to_numpy()
    assert _r2(f, n) < 0.25  # what each stream sees on its own, added
    assert _r2(np.column_stack([f, product]), n) < 0.55
    assert _r2(np.column_stack([f, product, binding]), n) > 0.9


def test_labels_match_the_real_marginals_and_correlate():
    labels, _ = _design(4000, seed=1)
    values = labels[list(LABEL_COLUMNS)]
    assert ((values >= 0) & (values <= 1)).all().all()
    for col in LABEL_COLUMNS:
        assert values[col].mean() == pytest.approx(REAL_MEANS[col], abs=0.012)
        assert values[col].std() == pytest.approx(REAL_SDS[col], abs=0.012)
    corr = values.corr()
    assert abs(corr.loc["openness", "extraversion"]) < 0.06
    assert corr.loc["interview", list(TRAITS)].min() > 0.4


def test_label_noise_is_the_documented_size():
    labels, factors = _design(4000, seed=2)
    for col in LABEL_COLUMNS:
        oracle = factors[f"oracle_{col}"]
        inside = (oracle > 0.1) & (oracle < 0.9)  # away from the clipping at 0 and 1
        resid = labels[col][inside] - oracle[inside]
        assert resid.std() == pytest.approx(SyntheticConfig().label_noise, rel=0.1)
        assert abs(resid.mean()) < 0.003


def test_faces_and_backdrops_never_cross_splits():
    """Validation and test show people and backgrounds that training never saw; the pools cover every id."""
    cfg = SyntheticConfig(n_train=600, n_val=150, n_test=250)
    _, _, factors = sample_design(cfg, seed=4)
    for column, total in (("face_id", N_FACES), ("background_id", N_BACKGROUNDS)):
        used = {split: set(rows[column]) for split, rows in factors.groupby("split")}
        assert (
            not used["train"] & used["val"]
            and not used["train"] & used["test"]
            and not used["val"] & used["test"]
        )
        pools = identity_pools(total, seed=4)
        assert sorted(np.concatenate(list(pools.values()))) == list(range(total))
        for split, ids in used.items():
            assert ids <= set(pools[split].tolist())
    assert (
        len(set(factors.loc[factors["split"] == "test", "face_id"])) >= 20
    )  # 25 test faces, most of them used


def test_nuisances_are_independent_of_labels():
    labels, factors = _design(3000, seed=3)
    face_means = labels.groupby(factors["face_id"])["openness"].mean()
    # With ~30 clips per face, the spread of face means is sampling noise only.
    assert face_means.std() < 2.0 * REAL_SDS["openness"] / np.sqrt(3000 / 101)
    for col in ("head_motion", "background_id"):
        assert abs(np.corrcoef(factors[col], labels["extraversion"])[0, 1]) < 0.06


def test_mtcnn_finds_the_face():
    from mtcnn import MTCNN

    cfg = SyntheticConfig(**{**TINY, "size": 256, "seconds": 1.0})
    specs, _, _ = sample_design(replace(cfg, n_train=4), 5)
    detector = MTCNN(device="CPU:0")
    for spec in specs[:4]:
        frame = render_frames(spec, cfg)[5]
        faces = detector.detect_faces(frame)
        assert faces, f"no face found in {spec.clip} (face {spec.face_id})"
        best = max(faces, key=lambda f: f["confidence"])
        x, _, w, h = best["box"]
        assert best["confidence"] > 0.9
        assert 60 <= h <= 200 and 0.25 * 256 <= x + w / 2 <= 0.75 * 256


def _region_energy(spec, cfg: SyntheticConfig, centre: tuple[float, float], half: tuple[int, int]) -> float:
    """Mean absolute 5-fps frame difference in a box that follows the head (centre in canvas fractions)."""
    frames = render_frames(spec, cfg).astype(np.float32)
    motion = clip_motion(spec, cfg)
    step = cfg.fps // 5  # the sampling rate of extract-frames
    (hw, hh), energy = half, []
    for k in range(0, len(frames) - step, step):
        cx, cy = motion.affine[k] @ np.array([centre[0] * CANVAS, centre[1] * CANVAS, 1.0])
        box = np.s_[int(cy) - hh : int(cy) + hh, int(cx) - hw : int(cx) + hw]
        energy.append(np.abs(frames[k][box] - frames[k + step][box]).mean())
    return float(np.mean(energy))


@pytest.mark.parametrize(("size", "face_scale"), [(128, 0.5), (256, 0.9)])
def test_frames_are_the_whole_frame_composite(size: int, face_scale: float):
    """render_frames blends only inside boxes (the warped canvas, the open mouth, the closing lids):
    its frames must be the bytes of every blend over the whole canvas and frame, for a swaying head
    whose canvas crosses the frame's edges (face_scale 0.9 at 256 px) and one that stays inside it,
    through blinks and speech."""
    cfg = SyntheticConfig(**{**TINY, "size": size, "face_scale": face_scale, "seconds": 3.0})
    spec = replace(sample_design(cfg, 3)[0][0], head_motion=3.0, d_blink=2.0, d_mouth=1.0)
    motion = clip_motion(spec, cfg)
    assert (motion.lids > 0.5).any() and (motion.mouth > 0.5).any()  # both blends are exercised
    frames, plain = render_frames(spec, cfg), reference_frames(spec, cfg)
    for k in range(len(frames)):
        assert np.array_equal(frames[k], plain[k]), f"frame {k}"


def test_mouth_moves_more_for_a_higher_speaking_rate():
    cfg = SyntheticConfig(**{**TINY, "size": 256, "seconds": 4.0, "fps": 25})
    spec = replace(sample_design(cfg, 11)[0][0], head_motion=0.0, d_blink=-3.0)
    slow, fast = replace(spec, d_mouth=-2.0), replace(spec, d_mouth=2.0)
    mouth = ((0.44, 0.76), (24, 16))
    assert _region_energy(fast, cfg, *mouth) > 1.5 * _region_energy(slow, cfg, *mouth)


def test_eyes_move_more_for_a_higher_blink_rate():
    cfg = SyntheticConfig(**{**TINY, "size": 256, "seconds": 6.0, "fps": 25})
    spec = replace(sample_design(cfg, 12)[0][0], head_motion=0.0, d_mouth=-3.0)
    rare, often = replace(spec, d_blink=-2.0), replace(spec, d_blink=2.0)
    eyes = ((0.43, 0.35), (30, 10))
    assert _region_energy(often, cfg, *eyes) > 2.0 * _region_energy(rare, cfg, *eyes)


def test_still_frames_show_the_same_mouth_openings_whatever_the_rate():
    cfg = SyntheticConfig(seconds=6.0)
    spec = sample_design(replace(cfg, n_train=1, n_val=0, n_test=0), 0)[0][0]
    slow = np.concatenate(
        [clip_motion(replace(spec, d_mouth=-2.0, seed=(i, 0, 0)), cfg).mouth for i in range(40)]
    )
    fast = np.concatenate(
        [clip_motion(replace(spec, d_mouth=2.0, seed=(i, 0, 0)), cfg).mouth for i in range(40)]
    )
    assert slow.mean() == pytest.approx(fast.mean(), abs=0.05)
    assert np.quantile(slow, 0.8) == pytest.approx(np.quantile(fast, 0.8), abs=0.08)


def test_blinks_follow_the_blink_rate_and_last_long_enough():
    cfg = SyntheticConfig(seconds=6.0)
    spec = sample_design(replace(cfg, n_train=1, n_val=0, n_test=0), 0)[0][0]

    def blinks(d_blink: float) -> float:
        counts = []
        for i in range(20):
            lids = clip_motion(replace(spec, d_blink=d_blink, seed=(i, 0, 0)), cfg).lids
            closed = lids > 0.5
            counts.append(np.count_nonzero(closed[1:] & ~closed[:-1]) + closed[0])
            edges = np.flatnonzero(np.diff(np.r_[0, closed.astype(int), 0])).reshape(-1, 2)
            inner = edges[(edges[:, 0] > 0) & (edges[:, 1] < len(closed))]  # not cut by the clip's ends
            assert (inner[:, 1] - inner[:, 0] >= 0.2 * cfg.fps).all()  # closed across a 5-fps sample
        return float(np.mean(counts))

    assert blinks(2.0) > 3.0 * blinks(-2.0)


def test_unknown_params_are_refused():
    with pytest.raises(ConfigError, match="colour"):
        SyntheticConfig.from_params({**TINY, "colour": 1})


def test_every_split_is_generated_in_order():
    specs, labels, _ = sample_design(SyntheticConfig(**TINY), 0)
    assert list(dict.fromkeys(labels["split"])) == list(SPLITS)
    assert [s.clip for s in specs] == labels["clip"].tolist()
