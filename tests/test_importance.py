"""Stream importance and occlusion with tiny real networks (no stubs): what a model ignores cannot matter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import DataConfig, ModelConfig
from model.data import Batch, ClipDataset, collate, make_loader
from model.network import Encoded, build_model
from model.records import TRAITS, Clip, ClipSource
from stages.report import importance
from stages.report.feature_views import occlusion_figure, stream_importance_figure
from stages.report.figures import apply_style, save_figure

FACE, FLOW, K = 32, 16, 2


def tiny_model(streams: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig.from_params(
        {
            "streams": streams,
            "static": {"frames": K, "input_size": FACE},
            "dynamic": {"input_size": FLOW, "channels": 4, "blocks": 1},
            "fusion": {"dim": 16, "heads": 2, "ff_mult": 1, "shared_position": False},
            "head_hidden": 8,
        }
    )
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> ClipDataset:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    clips = []
    for i in range(6):
        name = f"c{i}"
        for sub in ("faces", "flow"):
            (root / sub / "test").mkdir(parents=True, exist_ok=True)
        t = 4 + i % 3
        np.savez(
            root / "faces" / "test" / f"{name}.npz",
            faces=rng.integers(0, 256, (t, FACE, FACE, 3), dtype=np.uint8),
            valid=np.ones(t, bool),
        )
        np.savez(
            root / "flow" / "test" / f"{name}.npz",
            flow=rng.integers(-100, 100, (t - 1, FLOW, FLOW, 2), dtype=np.int8),
            scale=np.float32(0.05),
            valid=np.ones(t - 1, bool),
        )
        clips.append(Clip(name, "test"))
    cfg = DataConfig(static_frames=K, static_size=FACE, flow_size=FLOW)
    ds = ClipDataset(
        [ClipSource.under(c, root / "faces", root / "flow") for c in clips], None, cfg, train=False
    )
    ds.preload()
    return ds


def with_targets(ds: ClipDataset, model: torch.nn.Module) -> ClipDataset:
    """Targets = the model's own predictions on the intact input: a perfect score before removal."""
    batch = collate([ds[i] for i in range(len(ds))], ds.cfg)
    with torch.no_grad():
        ds.targets = model(batch.faces, batch.flow, batch.flow_mask).pred.numpy().astype(np.float32)
    return ds


def test_permuting_the_only_stream_hands_each_clip_another_clips_prediction(dataset):
    model = tiny_model("static")
    ds = with_targets(dataset, model)
    result = importance.stream_importance(model, make_loader(ds, 4, False, 0, 0), TRAITS, repeats=3, seed=7)
    assert set(result.removed) == {"static"}  # the model has no dynamic stream to permute
    np.testing.assert_allclose(result.full, 1.0, atol=1e-6)
    rng = np.random.default_rng(7)
    by_hand = []
    for _ in range(3):
        donor = importance.derangement(len(ds), rng)
        assert (donor != np.arange(len(ds))).all() and sorted(donor) == list(range(len(ds)))
        pred = ds.targets[donor]  # the only stream decides: clip i now predicts what its donor did
        if not by_hand:
            np.testing.assert_allclose(result.predictions["static"], pred, atol=1e-5)
        by_hand.append(1 - np.abs(ds.targets - pred).mean(0))
    expected = np.mean([np.append(a, a.mean()) for a in by_hand], axis=0)
    np.testing.assert_allclose(result.removed["static"], expected, atol=1e-5)
    d = result.to_dict()
    assert d["method"] == "permutation" and d["repeats"] == 3
    assert (
        d["drop_static"]["mean"] == pytest.approx(1.0 - expected[-1], abs=1e-5)
        and d["drop_static"]["mean"] > 0
    )
    assert d["drop_static_sd"]["mean"] >= 0


def test_a_permuted_stream_is_another_clips_real_input(dataset):
    """The permuted flow prediction of clip i is the plain forward pass on clip i's faces and its
    donor's flow (with the donor's mask): real inputs, only paired differently."""
    model = tiny_model("both")
    ds = with_targets(dataset, model)
    result = importance.stream_importance(model, make_loader(ds, 4, False, 0, 0), TRAITS, repeats=2, seed=3)
    assert set(result.removed) == {"static", "dynamic"}
    rng = np.random.default_rng(3)
    static_donor = importance.derangement(len(ds), rng)  # the first repeat draws static, then dynamic
    dynamic_donor = importance.derangement(len(ds), rng)
    batch = collate([ds[i] for i in range(len(ds))], ds.cfg)
    with torch.no_grad():
        flow_swapped = model(
            batch.faces, batch.flow[dynamic_donor], batch.flow_mask[dynamic_donor]
        ).pred.numpy()
        faces_swapped = model(batch.faces[static_donor], batch.flow, batch.flow_mask).pred.numpy()
    np.testing.assert_allclose(result.predictions["dynamic"], flow_swapped, atol=1e-5)
    np.testing.assert_allclose(result.predictions["static"], faces_swapped, atol=1e-5)
    for stream in ("static", "dynamic"):
        assert result.to_dict()[f"drop_{stream}"]["mean"] > 0


def test_a_permutation_needs_two_clips():
    with pytest.raises(ValueError, match="two clips"):
        importance.derangement(1, np.random.default_rng(0))


def test_occlusion_maps_only_for_streams_the_model_uses(dataset):
    batch = collate([dataset[i] for i in range(2)], dataset.cfg)
    maps = importance.occlusion_maps(tiny_model("static"), [batch], cells=3)
    assert set(maps) == {"static"} and maps["static"].shape == (len(TRAITS), 3, 3)
    assert (maps["static"] >= 0).all() and maps["static"].max() > 0
    both = importance.occlusion_maps(tiny_model("both"), [batch], cells=2)
    assert set(both) == {"static", "dynamic"} and both["dynamic"].max() > 0


def test_occluding_a_cell_the_input_never_had_changes_nothing(dataset):
    # Faces that are already the mean image in one cell: blanking that cell leaves the input unchanged.
    batch = collate([dataset[i] for i in range(2)], dataset.cfg)
    faces = batch.faces.clone()
    faces[..., :16, :16] = 0  # top-left cell of a 2x2 grid over 32 px
    batch = Batch(faces, batch.flow, batch.flow_mask, batch.target, batch.clips)
    maps = importance.occlusion_maps(tiny_model("static"), [batch], cells=2)
    assert np.allclose(maps["static"][:, 0, 0], 0.0, atol=1e-6) and maps["static"][:, 1, 1].max() > 0


def test_cell_slices_tile_the_image():
    seen = np.zeros((10, 10), int)
    for rows, cols in importance.cell_slices(10, 3):
        seen[rows, cols] += 1
    assert (seen == 1).all()


def test_figures(tmp_path, dataset):
    apply_style(60)
    model = tiny_model("both")
    ds = with_targets(dataset, model)
    result = importance.stream_importance(model, make_loader(ds, 4, False, 0, 0), TRAITS)
    maps = importance.occlusion_maps(model, [collate([ds[0]], ds.cfg)], cells=2)
    face = np.full((32, 32, 3), 128, np.uint8)
    baseline = dict.fromkeys([*TRAITS, "mean"], 0.8)
    for name, fig in (
        ("streams", stream_importance_figure(result.to_dict(), baseline)),
        ("occlusion", occlusion_figure(maps, TRAITS, face, None)),
    ):
        png, *pdf = save_figure(fig, tmp_path, name)  # a PDF only for the vector figure (no face images)
        assert png.stat().st_size > 1000
        assert [p.read_bytes()[:4] for p in pdf] == ([] if name == "occlusion" else [b"%PDF"])


def test_reused_stream_tokens_give_the_plain_forward_pass(dataset):
    model = tiny_model("both")
    batch = collate([dataset[i] for i in range(3)], dataset.cfg)
    with torch.no_grad():
        plain = model(batch.faces, batch.flow, batch.flow_mask).pred.numpy()
        enc = model.encode(batch.faces, batch.flow, batch.flow_mask)
        np.testing.assert_allclose(importance.fused_pred(model, enc), plain, rtol=1e-6, atol=1e-7)
        # one clip's occluded copies against the plain forward on that copy
        faces, flow, mask = batch.faces[:1], batch.flow[:1], batch.flow_mask[:1]
        copies = importance.occluded_copies(flow, 2)
        assert not copies[3, ..., 8:, 8:].any() and torch.equal(copies[3, ..., :8, :], flow[0, ..., :8, :])
        rep = model.encode(faces, flow, mask).expand(4)
        d_occ = model.encode_dynamic(copies, mask.expand(4, -1))
        cached = importance.fused_pred(model, Encoded(rep.static, d_occ))
        direct = model(faces.expand(4, -1, -1, -1, -1), copies, mask.expand(4, -1)).pred.numpy()
    np.testing.assert_allclose(cached, direct, rtol=1e-5, atol=1e-6)
