"""The dual-stream network: shapes, masking, attention, gradients, ablations, pretrained loading, freezing."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from model.config import ConfigError, ModelConfig
from model.network import build_model, freeze_prefixes, load_pretrained
from model.records import LABEL_COLUMNS, TRAITS

TINY = {
    "head_hidden": 16,
    "static": {"frames": 2, "input_size": 64, "token_layer": "layer4"},
    "dynamic": {"input_size": 16, "channels": 4, "blocks": 2},
    "fusion": {"dim": 16, "heads": 2, "shared_position": False},
}


def tiny_cfg(**over: dict) -> ModelConfig:
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for key, value in over.items():
        if isinstance(value, dict):
            d.setdefault(key, {}).update(value)
        else:
            d[key] = value
    return ModelConfig.from_params(d)


def inputs(cfg: ModelConfig, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    s, f = cfg.static.input_size, cfg.dynamic.input_size
    faces = torch.randn(b, cfg.static.frames, 3, s, s, generator=g)
    flow = torch.randn(b, t, 2, f, f, generator=g)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return faces, flow * mask[:, :, None, None, None], mask


def test_output_shapes_and_range() -> None:
    cfg = tiny_cfg()
    out = build_model(cfg).eval()(*inputs(cfg, [6, 4]), return_attention=True)
    assert out.pred.shape == (2, len(TRAITS))
    assert ((out.pred > 0) & (out.pred < 1)).all()
    assert out.static_grid == (2, 2, 2)  # 64 px / 32 = 2x2 tokens per frame
    t, h, w = out.dynamic_grid
    assert out.dynamic_mask.shape == (2, t * h * w)
    assert out.static_emb.shape == out.dynamic_emb.shape == (2, cfg.fusion.dim)
    ls = 2 * 2 * 2
    assert out.attention["static_to_dynamic"].shape == (2, cfg.fusion.heads, ls, t * h * w)
    assert out.attention["dynamic_to_static"].shape == (2, cfg.fusion.heads, t * h * w, ls)


@pytest.mark.parametrize("backbone", ["light3d", "r3d_18"])
def test_padding_never_changes_a_prediction(backbone: str) -> None:
    cfg = tiny_cfg(dynamic={"backbone": backbone})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    faces, flow, mask = inputs(cfg, [5, 11])
    with torch.no_grad():
        batched = model(faces, flow, mask).pred
        alone = model(faces[:1], flow[:1, :5], mask[:1, :5]).pred
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1])


@pytest.mark.parametrize("subtract", [True, False])
def test_mean_subtraction_ignores_a_global_displacement_and_padding(subtract: bool) -> None:
    cfg = tiny_cfg(dynamic={"subtract_mean": subtract})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    faces, flow, mask = inputs(cfg, [5, 7])
    drift = torch.tensor([1.5, -0.7])[None, None, :, None, None] * mask[:, :, None, None, None]
    with torch.no_grad():
        plain = model(faces, flow, mask).pred
        moved = model(faces, flow + drift, mask).pred  # the whole crop slides on the valid steps
        alone = model(faces[:1], flow[:1, :5], mask[:1, :5]).pred
    assert torch.allclose(plain, moved, atol=1e-5) == subtract
    torch.testing.assert_close(plain[0], alone[0], atol=1e-5, rtol=0)


def test_attention_sums_to_one_and_ignores_padding() -> None:
    cfg = tiny_cfg(fusion={"layers": 2})
    with torch.no_grad():
        out = build_model(cfg).eval()(*inputs(cfg, [3, 9]), return_attention=True)
    s2d, d2s = out.attention["static_to_dynamic"], out.attention["dynamic_to_static"]
    torch.testing.assert_close(s2d.sum(-1), torch.ones(s2d.shape[:-1]))
    padded = ~out.dynamic_mask[0]
    assert padded.any()
    assert s2d[0][..., padded].abs().max() == 0
    torch.testing.assert_close(d2s.sum(-1), torch.ones(d2s.shape[:-1]))


def test_attention_weights_are_computed_only_when_asked_for() -> None:
    """Without return_attention the fusion asks MultiheadAttention for no weights (its fast path);
    the predictions are the same either way."""
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    asked: list[bool] = []
    for layer in model.fusion.static_layers:
        layer.attn.register_forward_pre_hook(
            lambda _, args, kwargs: asked.append(kwargs["need_weights"]), with_kwargs=True
        )
    x = inputs(cfg, [5, 7])
    with torch.no_grad():
        plain, explained = model(*x), model(*x, return_attention=True)
    assert asked == [False, True]
    assert plain.attention is None and explained.attention
    torch.testing.assert_close(plain.pred, explained.pred, atol=1e-6, rtol=1e-5)


def test_encode_then_fuse_is_the_forward_pass() -> None:
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    x = inputs(cfg, [4, 6])
    with torch.no_grad():
        enc = model.encode(*x)
        assert enc.static.shape[0] == enc.dynamic.tokens.shape[0] == 2
        torch.testing.assert_close(model.fuse(enc).pred, model(*x).pred)
        one = model.encode(*(t[:1] for t in x)).expand(3)
        assert one.static.shape[0] == one.dynamic.mask.shape[0] == 3
        torch.testing.assert_close(
            model.fuse(one).pred, model(*x).pred[:1].expand(3, -1), atol=1e-6, rtol=1e-5
        )


def test_gradients_reach_both_streams() -> None:
    cfg = tiny_cfg()
    model = build_model(cfg).train()
    model(*inputs(cfg, [4, 6])).pred.sum().backward()
    for stream in (model.static, model.dynamic):
        grads = [p.grad for p in stream.backbone.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


ABLATIONS = [
    {"fusion": {"type": "concat"}},
    {"fusion": {"type": "add"}},
    {"streams": "static"},
    {"streams": "dynamic"},
    {"fusion": {"direction": "static_to_dynamic"}},
    {"fusion": {"direction": "dynamic_to_static"}},
    {"fusion": {"residual": False, "norm": False}},
    {"fusion": {"heads": 4, "layers": 2}},
    {"outputs": "traits_interview"},
    {"static": {"backbone": "resnet34", "input_size": 32}},
    {"static": {"backbone": "resnet50", "input_size": 32}},
    {"dynamic": {"backbone": "r2plus1d_18", "input_size": 32}},  # BN needs >1 value per channel
]


@pytest.mark.parametrize("over", ABLATIONS, ids=lambda d: str(d).replace(" ", ""))
def test_every_ablation_builds_and_trains_a_step(over: dict) -> None:
    cfg = tiny_cfg(**over)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    faces, flow, mask = inputs(cfg, [4, 6])
    out = model(faces, flow, mask, return_attention=True)
    assert out.pred.shape == (2, len(LABEL_COLUMNS) if cfg.outputs == "traits_interview" else len(TRAITS))
    assert (out.static_emb is None) == (cfg.streams == "dynamic")
    assert (out.dynamic_emb is None) == (cfg.streams == "static")
    has_attention = cfg.streams == "both" and cfg.fusion.type == "cross_attention"
    assert bool(out.attention) == has_attention
    before = [p.detach().clone() for p in model.head.parameters()]
    out.pred.sum().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.head.parameters(), strict=True))


def test_output_prior_sets_the_initial_prediction() -> None:
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    torch.nn.init.zeros_(model.head[-1].weight)
    mean = torch.tensor([0.2, 0.4, 0.5, 0.6, 0.8])
    model.set_output_prior(mean)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs(cfg, [4])).pred[0], mean)


def test_pretrained_state_dict_loads_and_reports_keys(tmp_path, caplog) -> None:
    reference = torchvision.models.resnet18(weights=None)
    state = reference.state_dict()
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="model.network"):
        model = build_model(tiny_cfg(static={"pretrained": str(path)}))
    assert "layer4.1.bn2.weight" in caplog.text
    assert "extra.weight" in caplog.text
    assert torch.equal(model.static.backbone.conv1.weight, reference.conv1.weight)
    result = load_pretrained(torchvision.models.resnet18(weights=None), path)
    assert result.missing_keys == ["layer4.1.bn2.weight"]
    assert result.unexpected_keys == ["extra.weight"]


def test_freeze_prefixes() -> None:
    assert freeze_prefixes("upto:layer2") == ["conv1", "bn1", "layer1", "layer2"]
    assert freeze_prefixes(" conv1, layer4 ") == ["conv1", "layer4"]
    assert freeze_prefixes("") == []
    with pytest.raises(ValueError):
        freeze_prefixes("upto:layer9")


def test_frozen_layers_do_not_change() -> None:
    cfg = tiny_cfg(static={"freeze": "upto:layer2"})
    model = build_model(cfg)
    backbone = model.static.backbone
    assert not any(p.requires_grad for p in backbone.layer2.parameters())
    assert all(p.requires_grad for p in backbone.layer3.parameters())
    frozen = {
        k: v.clone() for k, v in backbone.state_dict().items() if k.startswith(("conv1", "bn1", "layer1"))
    }
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(*inputs(cfg, [4, 6])).pred.sum().backward()
    opt.step()
    after = backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # weights and BN running stats
    assert backbone.bn1.training is False and backbone.layer3[0].bn1.training is True


def test_a_shared_position_embedding_is_one_parameter_on_one_grid() -> None:
    """4x4 face tokens (128 px) and 4x4 flow tokens (light3d at 56 px) over the same crop share
    one 2D position embedding: one tensor, trained once, in the checkpoint under both names."""
    over = {"static": {"input_size": 128}, "dynamic": {"input_size": 56, "channels": 4, "blocks": 3}}
    cfg = tiny_cfg(**over, fusion={"shared_position": True})
    model = build_model(cfg)
    assert model.static.grid[1:] == model.dynamic.spatial == (4, 4)
    assert model.static.pos_emb is model.dynamic.pos_emb
    assert sum(p is model.static.pos_emb for p in model.parameters()) == 1  # the optimizer sees it once
    out = model(*inputs(cfg, [3, 2]))
    out.pred.sum().backward()
    assert model.static.pos_emb.grad is not None and model.static.pos_emb.grad.abs().sum() > 0
    state = model.state_dict()
    assert torch.equal(
        state["static.pos_emb"], state["dynamic.pos_emb"].reshape(state["static.pos_emb"].shape)
    )
    again = build_model(cfg)
    again.load_state_dict(state)
    assert again.static.pos_emb is again.dynamic.pos_emb
    assert torch.equal(again.dynamic.pos_emb, model.static.pos_emb.detach())
    separate = build_model(tiny_cfg(**over))
    assert separate.static.pos_emb is not separate.dynamic.pos_emb


def test_a_shared_position_embedding_needs_the_same_grid() -> None:
    cfg = tiny_cfg(static={"input_size": 64}, dynamic={"input_size": 56, "channels": 4, "blocks": 3})
    cfg.fusion.shared_position = True
    with pytest.raises(ConfigError, match=r"2x2 grid .*4x4"):
        build_model(cfg)


def test_the_shuffled_position_control_moves_whole_cells_per_clip() -> None:
    """model.fusion.shuffle_flow_positions: each clip's flow features trade cells (the same
    permutation at every time step) before the position embedding; without it nothing moves."""
    cfg = tiny_cfg(dynamic={"input_size": 56, "channels": 4, "blocks": 3})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _, flow, mask = inputs(cfg, [6, 6])
    plain = model.dynamic(flow, mask)[0]
    assert torch.equal(plain, model.dynamic(flow, mask)[0])  # off: deterministic
    model.dynamic.shuffle_positions = True
    pos = model.dynamic.pos_emb.reshape(1, 1, 16, -1)
    t = plain.shape[1] // 16
    time = torch.stack([model.dynamic(flow, mask)[0] for _ in range(2)]).reshape(2, 2, t, 16, -1)
    content = time - pos  # the features without their place (the time embedding is the same per step)
    base = plain.reshape(2, t, 16, -1) - pos
    for run in content:
        for clip in range(2):
            # Every cell's features over time are some cell's features over time: a permutation of cells.
            d = torch.cdist(run[clip].transpose(0, 1).flatten(1), base[clip].transpose(0, 1).flatten(1))
            assert torch.allclose(d.min(dim=1).values, torch.zeros(16), atol=1e-4)
            assert sorted(d.argmin(dim=1).tolist()) == list(range(16))
    assert not torch.equal(content[0], content[1])  # a new permutation on every pass
    built = build_model(
        tiny_cfg(
            dynamic={"input_size": 56, "channels": 4, "blocks": 3}, fusion={"shuffle_flow_positions": True}
        )
    )
    assert built.dynamic.shuffle_positions


def test_layer3_tokens_give_a_4x4_grid_from_64_px_faces() -> None:
    over = {
        "static": {"input_size": 64, "frames": 1, "token_layer": "layer3"},
        "dynamic": {"input_size": 56, "channels": 4, "blocks": 3},
    }
    model = build_model(tiny_cfg(**over, fusion={"shared_position": True}))
    assert model.static.grid == (1, 4, 4) and model.dynamic.spatial == (4, 4)
    assert isinstance(model.static.backbone.layer4, torch.nn.Identity)
    cfg = tiny_cfg(**over)
    out = build_model(cfg)(*inputs(cfg, [4, 3]), return_attention=True)
    assert out.attention["static_to_dynamic"].shape[2] == 16
    with pytest.raises(ConfigError, match="token_layer"):
        tiny_cfg(static={"token_layer": "layer2"})
