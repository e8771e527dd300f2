"""Clip dataset and batching: sampling, resizing, consistent augmentation, padding, labels, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model.config import AugmentConfig, DataConfig
from model.data import (
    ClipDataset,
    augment_batch,
    collate,
    flow_window,
    frame_indices,
    load_clip_arrays,
    make_loader,
)
from model.records import LABEL_COLUMNS, TRAITS, Clip, ClipSource
from stages.common import save_npz

NO_AUG = AugmentConfig(flip=0.0, reverse=0.0, crop=1.0, brightness=0.0, contrast=0.0, saturation=0.0)


def write_clip(root: Path, clip: Clip, frames: int, face: int = 24, flow: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (frames, face, face, 3), dtype=np.uint8)
    save_npz(clip.path(root / "faces"), faces=faces, valid=np.ones(frames, bool), key="k")
    q = rng.integers(-127, 128, (frames - 1, flow, flow, 2)).astype(np.int8)
    save_npz(
        clip.path(root / "flow"), flow=q, scale=np.float32(0.05), valid=np.ones(frames - 1, bool), key="k"
    )


def labels_for(clips: list[Clip]) -> pd.DataFrame:
    rows = [{"clip": c.name, "split": c.split, **{col: (i + j) / 20 for j, col in enumerate(LABEL_COLUMNS)}}
            for i, c in enumerate(clips)]  # fmt: skip
    return pd.DataFrame(rows)


def small_cfg(**over) -> DataConfig:
    return DataConfig(**{"static_frames": 3, "static_size": 16, "flow_size": 12, "augment": NO_AUG, **over})


def test_frame_indices_spread_over_valid_frames() -> None:
    valid = np.zeros(20, bool)
    valid[4:16] = True
    centred = frame_indices(valid, 3, random=False)
    assert list(centred) == [6, 10, 14]  # centres of three 4-frame segments of frames 4..15
    torch.manual_seed(0)
    for _ in range(20):
        idx = frame_indices(valid, 3, random=True)
        assert valid[idx].all() and (np.diff(idx) >= 0).all()
        assert 4 <= idx[0] < 8 <= idx[1] < 12 <= idx[2] < 16
    assert len(frame_indices(np.zeros(5, bool), 4, random=False)) == 4  # no valid frame: use all
    assert len(frame_indices(np.ones(2, bool), 4, random=True)) == 4  # fewer frames than K: repeat


def test_flow_window() -> None:
    assert flow_window(10, 0, random=False) == slice(0, 10)
    assert flow_window(10, 20, random=True) == slice(0, 10)
    assert flow_window(10, 4, random=False) == slice(3, 7)
    starts = {flow_window(10, 4, random=True).start for _ in range(50)}
    assert starts <= set(range(7)) and len(starts) > 1


def test_load_resizes_faces_and_rescales_flow(tmp_path: Path) -> None:
    clip = Clip("a", "train")
    write_clip(tmp_path, clip, frames=6, face=24, flow=12)
    with np.load(clip.path(tmp_path / "flow")) as z:
        pixels = z["flow"].astype(np.float32) * z["scale"]
    arrays = load_clip_arrays(clip.path(tmp_path / "faces"), clip.path(tmp_path / "flow"), 16, 6)
    assert arrays.faces.shape == (6, 16, 16, 3) and arrays.faces.dtype == np.uint8
    assert arrays.flow.shape == (5, 6, 6, 2)
    # halving the field halves the displacements: the mean flow halves too
    np.testing.assert_allclose(arrays.flow.mean((1, 2)), pixels.mean((1, 2)) / 2, atol=1e-4)


def test_flip_mirrors_both_streams_and_negates_flow_x() -> None:
    faces = torch.rand(2, 3, 3, 8, 8)
    flow = torch.randn(2, 4, 2, 6, 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    aug = AugmentConfig(flip=1.0, reverse=0.0, crop=1.0, brightness=0.0, contrast=0.0, saturation=0.0)
    f2, fl2 = augment_batch(faces, flow, mask, aug)
    torch.testing.assert_close(f2, faces.flip(-1))
    torch.testing.assert_close(fl2[:, :, 0], -flow[:, :, 0].flip(-1))
    torch.testing.assert_close(fl2[:, :, 1], flow[:, :, 1].flip(-1))


def test_reversal_plays_clips_backwards_leaving_padding_alone() -> None:
    faces = torch.rand(2, 3, 3, 8, 8)
    flow = torch.randn(2, 5, 2, 6, 6)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    flow[1, 3:] = 0.0
    before = flow.clone()
    aug = AugmentConfig(flip=0.0, reverse=1.0, crop=1.0, brightness=0.0, contrast=0.0, saturation=0.0)
    f2, fl2 = augment_batch(faces, flow, mask, aug)
    torch.testing.assert_close(f2, faces.flip(1))
    torch.testing.assert_close(fl2[0], -flow[0].flip(0))
    torch.testing.assert_close(fl2[1, :3], -flow[1, :3].flip(0))  # only the valid steps
    assert (fl2[1, 3:] == 0).all()
    torch.testing.assert_close(flow, before)  # the input was copied, not changed in place
    never = augment_batch(faces, flow, mask, AugmentConfig(flip=0.0, reverse=0.0, crop=1.0))
    torch.testing.assert_close(never[1], flow)


def test_crop_uses_the_same_window_on_faces_and_flow_and_zooms_flow() -> None:
    torch.manual_seed(1)
    side_f, side_w = 32, 16
    # faces and flow both show the horizontal position: crops agree if their windows agree
    ramp_f = torch.linspace(0, 1, side_f).expand(side_f, side_f)
    ramp_w = torch.linspace(0, 1, side_w).expand(side_w, side_w)
    faces = ramp_f.expand(1, 1, 3, side_f, side_f).clone()
    flow = torch.stack([ramp_w, torch.ones_like(ramp_w)]).expand(1, 2, 2, side_w, side_w).clone()
    aug = AugmentConfig(flip=0.0, reverse=0.0, crop=0.5, brightness=0.0, contrast=0.0, saturation=0.0)
    f2, fl2 = augment_batch(faces, flow, torch.ones(1, 2, dtype=torch.bool), aug)
    zoom = fl2[0, 0, 1].mean().item()  # y flow was 1 px everywhere: now 1/s px
    assert 1.0 < zoom <= 2.0 + 1e-5
    crop_pos = f2[0, 0, 0, 0]  # the face's horizontal positions inside the window
    flow_pos = fl2[0, 0, 0, 0] / zoom
    assert crop_pos[-1] - crop_pos[0] == pytest.approx(1 / zoom, abs=0.08)
    assert crop_pos.mean() == pytest.approx(flow_pos.mean().item(), abs=0.05)


def test_colour_jitter_changes_faces_but_not_flow() -> None:
    torch.manual_seed(0)
    faces, flow = torch.rand(4, 2, 3, 8, 8), torch.randn(4, 3, 2, 6, 6)
    aug = AugmentConfig(flip=0.0, reverse=0.0, crop=1.0, brightness=0.1, contrast=0.1, saturation=0.1)
    f2, fl2 = augment_batch(faces, flow, torch.ones(4, 3, dtype=torch.bool), aug)
    assert not torch.allclose(f2, faces) and (f2 - faces).abs().max() < 0.35
    assert f2.min() >= 0 and f2.max() <= 1
    torch.testing.assert_close(fl2, flow)


def test_dataset_collate_pads_masks_and_labels(tmp_path: Path) -> None:
    clips = [Clip("a", "val"), Clip("b", "val")]
    write_clip(tmp_path, clips[0], frames=5)
    write_clip(tmp_path, clips[1], frames=9, seed=1)
    labels = labels_for(clips)
    cfg = small_cfg()
    ds = ClipDataset(
        [ClipSource.under(c, tmp_path / "faces", tmp_path / "flow") for c in clips], labels, cfg, train=False
    )
    batch = next(iter(make_loader(ds, 2, shuffle=False, workers=0, seed=0)))
    assert batch.faces.shape == (2, 3, 3, 16, 16) and batch.faces.dtype == torch.float32
    assert batch.flow.shape == (2, 8, 2, 12, 12)
    assert batch.flow_mask.sum(1).tolist() == [4, 8]
    assert batch.flow[0, 4:].abs().sum() == 0
    assert batch.clips == ["a", "b"]
    expected = labels.set_index("clip").loc[["a", "b"], list(TRAITS)].to_numpy(np.float32)
    np.testing.assert_allclose(batch.target.numpy(), expected)
    again = next(iter(make_loader(ds, 2, shuffle=False, workers=0, seed=5)))
    torch.testing.assert_close(again.faces, batch.faces)  # evaluation is deterministic


def test_interview_target_and_unlabelled_clips(tmp_path: Path) -> None:
    clips = [Clip("a", "test"), Clip("zz", "test")]
    for c in clips:
        write_clip(tmp_path, c, frames=4)
    cfg = small_cfg(label_columns=LABEL_COLUMNS)
    ds = ClipDataset(
        [ClipSource.under(c, tmp_path / "faces", tmp_path / "flow") for c in clips],
        labels_for(clips[:1]),
        cfg,
        train=False,
    )
    assert ds[0].target.shape == (len(LABEL_COLUMNS),)
    assert torch.isnan(ds[1].target).all()
    assert torch.isnan(
        ClipDataset(
            [ClipSource.under(c, tmp_path / "faces", tmp_path / "flow") for c in clips], None, cfg, False
        )[0].target
    ).all()


def test_preload_drops_unreadable_clips(tmp_path: Path) -> None:
    clips = [Clip("good", "train"), Clip("broken", "train"), Clip("absent", "train")]
    write_clip(tmp_path, clips[0], frames=4)
    write_clip(tmp_path, clips[1], frames=4)
    clips[1].path(tmp_path / "flow").write_bytes(b"not an npz")
    ds = ClipDataset(
        [ClipSource.under(c, tmp_path / "faces", tmp_path / "flow") for c in clips],
        labels_for(clips),
        small_cfg(),
        train=True,
    )
    dropped = ds.preload()
    assert set(dropped) == {"broken", "absent"}
    assert [c.name for c in ds.clips] == ["good"] and len(ds.targets) == 1


def test_training_loader_is_reproducible_with_its_seed(tmp_path: Path) -> None:
    clips = [Clip(f"c{i}", "train") for i in range(6)]
    for i, c in enumerate(clips):
        write_clip(tmp_path, c, frames=6, seed=i)
    cfg = small_cfg(augment=AugmentConfig())
    ds = ClipDataset(
        [ClipSource.under(c, tmp_path / "faces", tmp_path / "flow") for c in clips],
        labels_for(clips),
        cfg,
        train=True,
    )

    def first_batch(seed: int) -> list[str]:
        torch.manual_seed(seed)
        return next(iter(make_loader(ds, 3, shuffle=True, workers=0, seed=seed))).clips

    assert first_batch(3) == first_batch(3)
    assert any(first_batch(s) != first_batch(3) for s in range(4, 10))


def test_collate_without_config_uses_default_normalization() -> None:
    from model.data import Sample

    sample = Sample(
        torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(3, 2, 5, 5), torch.zeros(5), "x"
    )
    batch = collate([sample])
    d = DataConfig()
    expected = (1 - torch.tensor(d.mean)) / torch.tensor(d.std)
    torch.testing.assert_close(batch.faces[0, 0, :, 0, 0], expected)
