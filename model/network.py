"""The dual-stream network: a 2D CNN on face frames, a 3D CNN on optical flow, cross-attention fusion.

Reads top-down: the static stream (spatial face tokens), the dynamic stream (spatio-temporal
flow tokens, padded clips masked so padding never changes a real token), the fusion layers,
and the full model with its regression head.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from model.config import ConfigError, DynamicConfig, FusionConfig, ModelConfig, StaticConfig, pretrained_file

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    """What the network returns.

    `attention` (only with `return_attention=True` and cross-attention fusion) maps a direction
    to the LAST fusion layer's weights, per head, summing to one over keys:
    "static_to_dynamic" [B, heads, Ls, Ld] and/or "dynamic_to_static" [B, heads, Ld, Ls].
    Static token i lies on the face grid `static_grid` = (K, h, w) at (i // (h*w), i // w % h, i % w);
    dynamic token j at (j // (h*w), j // w % h, j % w) of `dynamic_grid` = (T', h, w), and is real
    where `dynamic_mask[:, j]` is True.
    """

    pred: Tensor  # [B, n_outputs] in (0, 1)
    attention: dict[str, Tensor] | None
    static_emb: Tensor | None  # [B, D] pooled (after fusion)
    dynamic_emb: Tensor | None  # [B, D] pooled over real tokens (after fusion)
    static_grid: tuple[int, int, int] | None  # (K, h, w)
    dynamic_grid: tuple[int, int, int] | None  # (T', h, w), T' of the longest clip in the batch
    dynamic_mask: Tensor | None  # [B, Ld] bool, True = token from real flow steps


@dataclass
class FlowTokens:
    """The dynamic stream's output: tokens, which of them come from real flow steps, and their grid."""

    tokens: Tensor  # (B, Ld, D)
    mask: Tensor  # (B, Ld) bool
    grid: tuple[int, int, int]  # (T', h, w), T' of the longest clip in the batch

    def expand(self, n: int) -> FlowTokens:
        """One clip's tokens repeated for a batch of n variants of that clip."""
        return FlowTokens(self.tokens.expand(n, *self.tokens.shape[1:]), self.mask.expand(n, -1), self.grid)


@dataclass
class Encoded:
    """Both streams' tokens before fusion (None for a stream the model does not use)."""

    static: Tensor | None  # (B, Ls, D)
    dynamic: FlowTokens | None

    def expand(self, n: int) -> Encoded:
        """One clip's encoding repeated for a batch of n variants of that clip."""
        return Encoded(
            None if self.static is None else self.static.expand(n, *self.static.shape[1:]),
            None if self.dynamic is None else self.dynamic.expand(n),
        )


# ---------------------------------------------------------------- static stream


StateDict = dict[str, Tensor]


def load_pretrained(
    module: nn.Module, path: str | Path, adapt: Callable[[StateDict], StateDict] | None = None
) -> nn.modules.module._IncompatibleKeys:
    """Load a local torchvision state dict non-strictly, logging keys that did not match.

    `adapt` rewrites the state dict first (the dynamic stream turns an RGB stem into a flow stem).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    if adapt is not None:
        state = adapt(state)
    own = module.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in shape_mismatch}
    result = module.load_state_dict(state, strict=False)
    log.info("loaded pretrained weights from %s (%d tensors)", path, len(state) - len(result.unexpected_keys))
    if result.missing_keys:
        log.warning("pretrained: %d missing keys: %s", len(result.missing_keys), result.missing_keys)
    if result.unexpected_keys:
        log.warning("pretrained: %d unexpected keys: %s", len(result.unexpected_keys), result.unexpected_keys)
    if shape_mismatch:
        log.warning("pretrained: %d keys skipped for shape mismatch: %s", len(shape_mismatch), shape_mismatch)
    return result


RESNET_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def freeze_prefixes(spec: str) -> list[str]:
    """Parameter-name prefixes to freeze: "conv1,layer1" as given, or "upto:layer2" = stem..layer2."""
    spec = spec.strip()
    if not spec:
        return []
    if spec.startswith("upto:"):
        last = spec.removeprefix("upto:").strip()
        if last not in RESNET_STAGES:
            raise ValueError(f"freeze upto: unknown stage {last!r}; choose from {RESNET_STAGES}")
        return list(RESNET_STAGES[: RESNET_STAGES.index(last) + 1])
    return [p.strip() for p in spec.split(",") if p.strip()]


class StaticStream(nn.Module):
    """ResNet trunk on K face frames; its last feature map gives K*h*w spatial tokens."""

    def __init__(self, cfg: StaticConfig, dim: int) -> None:
        super().__init__()
        self.backbone = getattr(torchvision.models, cfg.backbone)(weights=None)
        self.backbone.fc = nn.Identity()
        path = pretrained_file(cfg.pretrained)
        if path is not None:
            load_pretrained(self.backbone, path)
        self.frozen = freeze_prefixes(cfg.freeze)
        for name, param in self.backbone.named_parameters():
            if any(name.startswith(p) for p in self.frozen):
                param.requires_grad_(False)
        # Tokens from layer4 (stride 32), or from layer3 (stride 16: a 4x4 grid from 64-px faces at a
        # quarter of the cost of 128 px; layer4 is then dropped, its weights unused).
        self.token_layer = cfg.token_layer
        if self.token_layer == "layer3":
            self.backbone.layer4 = nn.Identity()
            channels = self.backbone.layer3[-1].conv1.in_channels
        else:
            channels = self.backbone.layer4[-1].conv1.in_channels
        stride = 16 if self.token_layer == "layer3" else 32
        h = w = math.ceil(cfg.input_size / stride)
        self.grid = (cfg.frames, h, w)
        self.proj = nn.Linear(channels, dim)
        self.frame_emb = nn.Parameter(torch.zeros(cfg.frames, 1, dim))
        self.pos_emb = nn.Parameter(torch.zeros(1, h * w, dim))
        nn.init.trunc_normal_(self.frame_emb, std=0.02)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def train(self, mode: bool = True) -> StaticStream:
        """Frozen batch norms keep their running statistics."""
        super().train(mode)
        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.BatchNorm2d) and any(name.startswith(p) for p in self.frozen):
                module.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))  # layer4 is the identity with token_layer layer3

    def forward(self, faces: Tensor) -> Tensor:
        bsz, k = faces.shape[:2]
        fmap = self.features(faces.flatten(0, 1))  # (B*K, C, h, w)
        if fmap.shape[-2:] != self.grid[1:]:
            raise ValueError(f"face input gives a {tuple(fmap.shape[-2:])} grid, expected {self.grid[1:]}")
        tokens = self.proj(fmap.flatten(2).transpose(1, 2))  # (B*K, h*w, D)
        tokens = tokens.unflatten(0, (bsz, k)) + self.frame_emb[:k] + self.pos_emb  # (B, K, h*w, D)
        return tokens.flatten(1, 2)  # (B, K*h*w, D)


# ---------------------------------------------------------------- dynamic stream


class MaskedConv3dBlock(nn.Module):
    """Conv3d-BN-ReLU whose padded time steps are re-zeroed, so they look like conv zero padding."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.stride_t = stride[0]
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(cout)

    def out_lengths(self, lengths: Tensor) -> Tensor:
        return (lengths - 1) // self.stride_t + 1

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.bn(self.conv(x)))  # (B, C, T', H', W')
        lengths = self.out_lengths(lengths)
        keep = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]
        return x * keep[:, None, :, None, None].to(x.dtype), lengths


class Light3D(nn.Module):
    """A small 3D CNN for CPUs: a stem and a few strided blocks, masked over padded steps."""

    def __init__(self, cfg: DynamicConfig) -> None:
        super().__init__()
        width = cfg.channels
        blocks = [MaskedConv3dBlock(2, width, (1, 2, 2))]
        for _ in range(cfg.blocks):
            blocks.append(MaskedConv3dBlock(width, width * 2, (2, 2, 2)))
            width *= 2
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = width

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return x, lengths


FLOW_STEM_KEY = "stem.0.weight"  # the first conv of torchvision's video ResNets, the one that sees RGB
FLOW_CHANNELS = 2  # flow x and y


def flow_stem_from_rgb(
    state: StateDict, key: str = FLOW_STEM_KEY, channels: int = FLOW_CHANNELS
) -> StateDict:
    """Cross-modality initialisation (Wang et al., Temporal Segment Networks, ECCV 2016): the
    3-channel RGB stem's filters averaged over the colour channels and the mean repeated for
    each of the `channels` flow channels. Every other tensor is kept; a stem that already has
    `channels` inputs is returned as it is."""
    weight = state[key]
    if weight.shape[1] == channels:
        return dict(state)
    if weight.shape[1] != 3:
        raise ValueError(f"{key}: {tuple(weight.shape)} is not an RGB stem (3 input channels)")
    mean = weight.mean(dim=1, keepdim=True)
    return {**state, key: mean.repeat(1, channels, *(1,) * (weight.dim() - 2))}


def adapt_flow_stem(state: StateDict) -> StateDict:
    """A video ResNet state dict for the 2-channel flow stem: an RGB stem is converted, with a log line."""
    weight = state.get(FLOW_STEM_KEY)
    if weight is None or weight.dim() < 2 or weight.shape[1] != 3:
        return state
    log.info(
        "pretrained: %s has an RGB stem %s; averaged over the colour channels for %d flow channels "
        "(cross-modality initialisation, Wang et al. 2016)",
        FLOW_STEM_KEY,
        tuple(weight.shape),
        FLOW_CHANNELS,
    )
    return flow_stem_from_rgb(state)


class VideoResNet(nn.Module):
    """torchvision r3d_18 / r2plus1d_18 with a 2-channel stem, run per clip length so padding cannot leak."""

    # torchvision's module names, in order: trunk.<i> is torchvision's TRUNK[i]
    TRUNK = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, cfg: DynamicConfig) -> None:
        super().__init__()
        net = getattr(torchvision.models.video, cfg.backbone)(weights=None)
        old = net.stem[0]
        net.stem[0] = nn.Conv3d(
            FLOW_CHANNELS,
            old.out_channels,
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=False,
        )
        self.out_channels = net.fc.in_features
        net.fc = nn.Identity()  # the Kinetics classifier: a pretrained file's fc.* are unexpected keys
        path = pretrained_file(cfg.pretrained)
        if path is not None:
            load_pretrained(net, path, adapt=adapt_flow_stem)  # in torchvision's key layout
        self.trunk = nn.Sequential(*(getattr(net, name) for name in self.TRUNK))

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        outs: dict[int, tuple[Tensor, Tensor]] = {}
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().flatten()
            outs[length] = (rows, self.trunk(x[rows, :, :length]))
        t_max = max(o.shape[2] for _, o in outs.values())
        sample = next(iter(outs.values()))[1]
        y = sample.new_zeros((x.shape[0], sample.shape[1], t_max, *sample.shape[3:]))
        out_lengths = torch.zeros_like(lengths)
        for rows, o in outs.values():
            y[rows, :, : o.shape[2]] = o
            out_lengths[rows] = o.shape[2]
        return y, out_lengths


def sinusoid(n: int, dim: int, device: torch.device) -> Tensor:
    """Fixed sinusoidal embedding of positions 0..n-1: temporal length varies between clips."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / dim))
    emb = torch.zeros(n, dim, device=device)
    emb[:, 0::2] = torch.sin(pos * freq)
    emb[:, 1::2] = torch.cos(pos * freq)
    return emb


class DynamicStream(nn.Module):
    """3D CNN on the flow clip; its feature map gives T'*h*w tokens and their validity mask."""

    def __init__(self, cfg: DynamicConfig, dim: int) -> None:
        super().__init__()
        self.backbone = Light3D(cfg) if cfg.backbone == "light3d" else VideoResNet(cfg)
        self.proj = nn.Linear(self.backbone.out_channels, dim)
        with torch.no_grad():
            probe, _ = self.backbone.eval()(
                torch.zeros(1, 2, 8, cfg.input_size, cfg.input_size), torch.tensor([8])
            )
        self.backbone.train()
        self.subtract_mean = cfg.subtract_mean
        self.shuffle_positions = False  # the control of model.fusion.shuffle_flow_positions
        h, w = probe.shape[-2:]
        self.spatial = (h, w)
        self.pos_emb = nn.Parameter(torch.zeros(1, 1, h * w, dim))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def forward(self, flow: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, tuple[int, int, int]]:
        lengths = mask.sum(1).clamp(min=1)
        if self.subtract_mean:
            # Mean displacement subtraction (Simonyan and Zisserman, NeurIPS 2014): what moves
            # the whole crop (head motion, alignment jitter) is removed, leaving the face's own motion.
            flow = flow - flow.mean(dim=(-2, -1), keepdim=True)
        x = flow.transpose(1, 2) * mask[:, None, :, None, None].to(flow.dtype)  # (B, 2, T, F, F)
        fmap, lengths = self.backbone(x, lengths)  # (B, C, T', h, w)
        bsz, _, t, h, w = fmap.shape
        tokens = self.proj(fmap.flatten(3).permute(0, 2, 3, 1))  # (B, T', h*w, D)
        if self.shuffle_positions:
            # The control: each clip's flow features change places (one permutation of the h*w
            # cells per clip, the same at every time step) before the position embedding, so a
            # token's place says nothing about where in the face its motion was.
            order = torch.argsort(torch.rand(bsz, h * w, device=tokens.device), dim=1)
            tokens = torch.gather(tokens, 2, order[:, None, :, None].expand_as(tokens))
        pos = self.pos_emb.reshape(1, 1, h * w, -1)  # its own, or the face stream's when shared
        tokens = tokens + pos + sinusoid(t, tokens.shape[-1], tokens.device)[None, :, None]
        valid = torch.arange(t, device=flow.device)[None, :] < lengths[:, None]  # (B, T')
        valid = valid[:, :, None].expand(bsz, t, h * w)
        return tokens.flatten(1, 2), valid.flatten(1), (t, h, w)


# ---------------------------------------------------------------- fusion


class CrossAttentionLayer(nn.Module):
    """Queries attend to another token set, then a feed-forward block; residual and norm switchable."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.residual = cfg.residual
        norm = (lambda: nn.LayerNorm(dim)) if cfg.norm else nn.Identity
        self.norm_q, self.norm_kv, self.norm_ff = norm(), norm(), norm()
        self.attn = nn.MultiheadAttention(dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(dim, cfg.ff_mult * dim),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ff_mult * dim, dim),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, q: Tensor, kv: Tensor, kv_mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """The updated queries, and the attention weights (B, heads, Lq, Lk) when `need_weights`."""
        kvn = self.norm_kv(kv)
        pad = None if kv_mask is None else ~kv_mask
        a, weights = self.attn(
            self.norm_q(q),
            kvn,
            kvn,
            key_padding_mask=pad,
            need_weights=need_weights,
            average_attn_weights=False,
        )
        x = q + self.drop(a) if self.residual else a
        f = self.drop(self.ff(self.norm_ff(x)))
        return (x + f if self.residual else f), weights


class CrossAttentionFusion(nn.Module):
    """`layers` rounds of cross-attention in one or both directions; both sets update in parallel."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.s2d = cfg.direction in ("static_to_dynamic", "bidirectional")
        self.d2s = cfg.direction in ("dynamic_to_static", "bidirectional")
        self.static_layers = nn.ModuleList(
            CrossAttentionLayer(cfg) for _ in range(cfg.layers if self.s2d else 0)
        )
        self.dynamic_layers = nn.ModuleList(
            CrossAttentionLayer(cfg) for _ in range(cfg.layers if self.d2s else 0)
        )
        self.layers = cfg.layers

    def forward(
        self, s: Tensor, d: Tensor, d_mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Both token sets after fusion, and the last layer's weights per direction when asked."""
        attention: dict[str, Tensor] = {}
        for i in range(self.layers):
            s_new, d_new = s, d
            if self.s2d:
                s_new, w = self.static_layers[i](s, d, d_mask, need_weights)
                if w is not None:
                    attention["static_to_dynamic"] = w
            if self.d2s:
                d_new, w = self.dynamic_layers[i](d, s, None, need_weights)
                if w is not None:
                    attention["dynamic_to_static"] = w
            s, d = s_new, d_new
        return s, d, attention


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over tokens (B, L, D) -> (B, D), counting only those where mask is True."""
    if mask is None:
        return tokens.mean(1)
    m = mask[..., None].to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


# ---------------------------------------------------------------- the model


class DualStreamNet(nn.Module):
    """Faces and flow to Big Five scores (and interview, optionally), with switchable fusion."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dim = cfg.fusion.dim
        self.use_static = cfg.streams in ("both", "static")
        self.use_dynamic = cfg.streams in ("both", "dynamic")
        self.static = StaticStream(cfg.static, dim) if self.use_static else None
        self.dynamic = DynamicStream(cfg.dynamic, dim) if self.use_dynamic else None
        both = self.use_static and self.use_dynamic
        self.fusion = (
            CrossAttentionFusion(cfg.fusion) if both and cfg.fusion.type == "cross_attention" else None
        )
        if both and cfg.fusion.shared_position:
            self._share_position(cfg)
        if self.dynamic is not None:
            self.dynamic.shuffle_positions = cfg.fusion.shuffle_flow_positions
        head_in = 2 * dim if both and cfg.fusion.type != "add" else dim
        self.head = nn.Sequential(
            nn.LayerNorm(head_in),
            nn.Linear(head_in, cfg.head_hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.head_hidden, cfg.n_outputs),
        )

    def _share_position(self, cfg: ModelConfig) -> None:
        """One 2D position embedding for both streams: face token (i, j) and flow token (i, j) start
        from the same vector, so attention can relate a place in the face to the same place in the
        motion. Both grids must cover the same face area at the same resolution."""
        face, flow = self.static.grid[1:], self.dynamic.spatial
        if face != flow:
            raise ConfigError(
                f"model.fusion.shared_position: the face tokens lie on a {face[0]}x{face[1]} grid "
                f"(model.static.input_size {cfg.static.input_size}) and the flow tokens on "
                f"{flow[0]}x{flow[1]} (model.dynamic.input_size {cfg.dynamic.input_size}); a shared "
                "position embedding needs the same grid (e.g. static 128 px and light3d flow 56 px: 4x4)"
            )
        self.dynamic.pos_emb = self.static.pos_emb  # one Parameter, registered in both streams

    @torch.no_grad()
    def set_output_prior(self, mean: Tensor) -> None:
        """Start the sigmoid head at the training-label mean, so early epochs need not find it."""
        p = torch.as_tensor(mean, dtype=torch.float32).clamp(1e-3, 1 - 1e-3)
        self.head[-1].bias.copy_(torch.logit(p).to(self.head[-1].bias))

    def encode_static(self, faces: Tensor | None) -> Tensor | None:
        """Face tokens (B, Ls, D) on the grid `static.grid`; None without the static stream."""
        return None if self.static is None else self.static(faces)

    def encode_dynamic(self, flow: Tensor | None, flow_mask: Tensor | None) -> FlowTokens | None:
        """Flow tokens (B, Ld, D), their validity (B, Ld) and grid; None without the dynamic stream."""
        if self.dynamic is None:
            return None
        return FlowTokens(*self.dynamic(flow, flow_mask))

    def encode(self, faces: Tensor | None, flow: Tensor | None, flow_mask: Tensor | None) -> Encoded:
        """Both streams' tokens, before fusion."""
        return Encoded(self.encode_static(faces), self.encode_dynamic(flow, flow_mask))

    def fuse(self, enc: Encoded, return_attention: bool = False) -> ModelOutput:
        """Fusion and the head on given tokens: analyses vary one stream's tokens and reuse the other's.

        The attention weights are computed only with `return_attention` (cross-attention fusion).
        """
        s = enc.static
        d, d_mask = (None, None) if enc.dynamic is None else (enc.dynamic.tokens, enc.dynamic.mask)
        attention = None
        if self.fusion is not None:
            s, d, attention = self.fusion(s, d, d_mask, need_weights=return_attention)
        s_emb = None if s is None else masked_mean(s, None)
        d_emb = None if d is None else masked_mean(d, d_mask)
        if s_emb is not None and d_emb is not None:
            z = s_emb + d_emb if self.cfg.fusion.type == "add" else torch.cat([s_emb, d_emb], dim=1)
        else:
            z = s_emb if s_emb is not None else d_emb
        return ModelOutput(
            pred=torch.sigmoid(self.head(z)),
            attention=attention if return_attention else None,
            static_emb=s_emb,
            dynamic_emb=d_emb,
            static_grid=None if self.static is None else self.static.grid,
            dynamic_grid=None if enc.dynamic is None else enc.dynamic.grid,
            dynamic_mask=d_mask,
        )

    def forward(
        self,
        faces: Tensor | None,
        flow: Tensor | None,
        flow_mask: Tensor | None,
        return_attention: bool = False,
    ) -> ModelOutput:
        return self.fuse(self.encode(faces, flow, flow_mask), return_attention)


def build_model(cfg: ModelConfig) -> DualStreamNet:
    """The network a ModelConfig describes."""
    return DualStreamNet(cfg)
