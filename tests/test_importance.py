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
            "fusion": {"dim": 16, "heads": 2, "ff_mult": 1},
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


def test_removing_the_only_stream_leaves_a_constant_predictor(dataset):
    model = tiny_model("static")
    ds = with_targets(dataset, model)
    result = importance.stream_importance(model, make_loader(ds, 4, False, 0, 0), TRAITS)
    assert set(result.removed) == {"static"}  # the model has no dynamic stream to remove
    np.testing.assert_allclose(result.full, 1.0, atol=1e-6)
    no_static = result.predictions["static"]
    np.testing.assert_allclose(no_static, np.broadcast_to(no_static[0], no_static.shape), atol=1e-6)
    constant = 1 - np.abs(ds.targets - no_static[0]).mean(0)
    np.testing.assert_allclose(result.removed["static"][:-1], constant, atol=1e-6)
    d = result.to_dict()
    assert (
        d["drop_static"]["mean"] == pytest.approx(1.0 - constant.mean(), abs=1e-6)
        and d["drop_static"]["mean"] > 0
    )


def test_both_streams_each_matter_and_zeroing_is_what_it_says(dataset):
    model = tiny_model("both")
    ds = with_targets(dataset, model)
    result = importance.stream_importance(model, make_loader(ds, 4, False, 0, 0), TRAITS)
    assert set(result.removed) == {"static", "dynamic"}
    batch = collate([ds[i] for i in range(len(ds))], ds.cfg)
    zeroed = importance.remove_stream(batch, "dynamic")
    assert torch.equal(zeroed.faces, batch.faces) and not zeroed.flow.any()
    with torch.no_grad():
        by_hand = model(batch.faces, torch.zeros_like(batch.flow), batch.flow_mask).pred.numpy()
    np.testing.assert_allclose(result.predictions["dynamic"], by_hand, atol=1e-5)
    for stream in ("static", "dynamic"):
        assert result.to_dict()[f"drop_{stream}"]["mean"] > 0


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
        png, pdf = save_figure(fig, tmp_path, name)
        assert png.stat().st_size > 1000 and pdf.read_bytes()[:4] == b"%PDF"


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
