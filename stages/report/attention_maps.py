"""Attention of the fusion layer mapped back onto the aligned face, and its mass on known face regions.

Aligned faces put the five landmarks on the align-faces template, so the eyes and the mouth sit
at fixed places in every crop (and in every flow field, computed on the same crops). On the
synthetic data the trait-relevant motion lives exactly there (stages/sources/synthetic.py): the share
of attention on those regions, against their share of the area, says whether the network looks
where the answer is. Boxes are given in units of the template's inter-eye distance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from stages.preprocess.template import template
from stages.report.style import DOUBLE, HEAT_CMAP, PALETTE, colorbar, image_panel, subplots

if TYPE_CHECKING:
    import torch

REGION_COLOURS = {"eyes": PALETTE[1], "mouth": PALETTE[5]}


@dataclass(frozen=True)
class RegionSpec:
    """Sizes of the eye and mouth boxes around the template landmarks, in inter-eye distances."""

    eye_half_width: float = 0.30
    eye_above: float = 0.35  # the lid slides down from the brow
    eye_below: float = 0.25
    mouth_half_width: float = 0.55
    mouth_above: float = 0.15
    mouth_below: float = 0.60  # the jaw drops below the mouth


def region_boxes(margin: float, spec: RegionSpec) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes (x0, y0, x1, y1) as fractions of the crop side for the regions 'eyes' (two) and 'mouth'."""
    side = 112
    lm = template(side, margin).astype(np.float64) / side
    d = float(np.linalg.norm(lm[1] - lm[0]))
    eyes = [
        (
            x - spec.eye_half_width * d,
            y - spec.eye_above * d,
            x + spec.eye_half_width * d,
            y + spec.eye_below * d,
        )
        for x, y in lm[:2]
    ]
    mx, my = lm[3:].mean(axis=0)
    mouth = [
        (
            mx - spec.mouth_half_width * d,
            my - spec.mouth_above * d,
            mx + spec.mouth_half_width * d,
            my + spec.mouth_below * d,
        )
    ]
    return {"eyes": [_clip_box(b) for b in eyes], "mouth": [_clip_box(b) for b in mouth]}


def _clip_box(box: tuple[float, ...]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(np.clip(v, 0.0, 1.0)) for v in box)
    return x0, y0, x1, y1


def region_mask(boxes: list[tuple[float, float, float, float]], size: int) -> np.ndarray:
    """Boolean [size, size] mask of the union of boxes given as fractions of the side."""
    mask = np.zeros((size, size), bool)
    for x0, y0, x1, y1 in boxes:
        mask[round(y0 * size) : round(y1 * size), round(x0 * size) : round(x1 * size)] = True
    return mask


def upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    """A map over equal cells [h, w] as a density on pixels [size, size] (nearest cell of each pixel centre).

    Summed over a region and divided by the total, it gives the region's share of the mass;
    a uniform map gives exactly the region's share of the area, whatever the grid.
    """
    h, w = grid_map.shape
    rows = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
    return grid_map[np.ix_(rows, cols)]


@dataclass(frozen=True)
class RegionMass:
    """Share of a map's mass inside a region, its share of the area, and their ratio."""

    mass_share: float
    area_share: float

    @property
    def lift(self) -> float:
        return self.mass_share / self.area_share if self.area_share > 0 else float("nan")


def region_mass(grid_map: np.ndarray, mask: np.ndarray) -> RegionMass:
    """Mass of a non-negative map [h, w] (any grid, even pixels) falling in `mask` [S, S]."""
    pixels = upsample(np.asarray(grid_map, dtype=np.float64), mask.shape[0])
    total = pixels.sum()
    share = float(pixels[mask].sum() / total) if total > 0 else float("nan")
    return RegionMass(share, float(mask.mean()))


def masses(grid_map: np.ndarray, boxes: Mapping[str, list], size: int = 224) -> dict[str, RegionMass]:
    """RegionMass of each region and of their union ('eyes+mouth')."""
    masks = {name: region_mask(b, size) for name, b in boxes.items()}
    masks["eyes+mouth"] = np.logical_or.reduce(list(masks.values()))
    return {name: region_mass(grid_map, m) for name, m in masks.items()}


# ---------------------------------------------------------------- attention from the dump


@dataclass
class ClipAttention:
    """One clip's attention reduced to where (a spatial map summing to 1) and when (per time step)."""

    clip: str
    direction: str
    spatial: np.ndarray  # [h, w]
    temporal: np.ndarray  # [T'] (static_to_dynamic: flow steps) or [K] (dynamic_to_static: face frames)


def reduce_attention(dump: Mapping[str, np.ndarray]) -> list[ClipAttention]:
    """Per clip and direction, head- and query-averaged attention over the key tokens as maps.

    static_to_dynamic: where the face tokens look in the flow clip (keys on the dynamic grid);
    dynamic_to_static: where the motion tokens look on the face (keys on the static grid).
    """
    out: list[ClipAttention] = []
    clips = [str(c) for c in dump["clips"]]
    for i, clip in enumerate(clips):
        n_dyn = int(dump["dynamic_tokens"][i]) if "dynamic_tokens" in dump else 0
        if "static_to_dynamic" in dump and n_dyn:
            t, h, w = (int(v) for v in dump["dynamic_grid"][i])
            keys = dump["static_to_dynamic"][i][:, :, :n_dyn].mean(axis=(0, 1))  # [Ld]
            grid = keys.reshape(t, h, w)
            out.append(ClipAttention(clip, "static_to_dynamic", grid.sum(0), grid.sum(axis=(1, 2))))
        if "dynamic_to_static" in dump and n_dyn:
            k, h, w = (int(v) for v in dump["static_grid"])
            keys = dump["dynamic_to_static"][i][:, :n_dyn, :].mean(axis=(0, 1))  # [Ls]
            grid = keys.reshape(k, h, w)
            out.append(ClipAttention(clip, "dynamic_to_static", grid.sum(0), grid.sum(axis=(1, 2))))
    return out


def attention_mass_report(
    reduced: list[ClipAttention], boxes: Mapping[str, list], synthetic: bool
) -> dict[str, object]:
    """Mass share of each region per direction, averaged over clips, with each clip's figure."""
    report: dict[str, object] = {
        "synthetic": synthetic,
        "note": "mass_share: share of attention on the region; area_share: its share of the crop; "
        "lift = mass/area (1 = no preference). On synthetic data the trait-relevant motion is on the eyes "
        "and mouth.",
        "boxes": {k: [list(b) for b in v] for k, v in boxes.items()},
    }
    for direction in sorted({r.direction for r in reduced}):
        maps = [r for r in reduced if r.direction == direction]
        mean_map = np.mean([r.spatial for r in maps], axis=0)
        per_clip = {r.clip: {k: m.mass_share for k, m in masses(r.spatial, boxes).items()} for r in maps}
        report[direction] = {
            "clips": len(maps),
            "grid": list(mean_map.shape),
            "mean_map": mean_map.tolist(),
            "regions": {
                k: {"mass_share": m.mass_share, "area_share": m.area_share, "lift": m.lift}
                for k, m in masses(mean_map, boxes).items()
            },
            "per_clip": per_clip,
        }
    return report


# ---------------------------------------------------------------- figures


def display_map(grid_map: np.ndarray, size: int) -> np.ndarray:
    """A map as a smooth [size, size] image for overlays (bilinear), scaled to [0, 1]."""
    import cv2

    img = cv2.resize(grid_map.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    span = float(img.max() - img.min())
    if span <= 1e-6 * max(float(np.abs(img).max()), 1e-12):  # a flat map has nothing to show
        return np.zeros_like(img)
    return (img - img.min()) / span


def draw_boxes(ax: plt.Axes, boxes: Mapping[str, list], size: int) -> None:
    """The region boxes, dashed, drawn whole even where an edge lies on the border of the image."""
    for name, group in boxes.items():
        for x0, y0, x1, y1 in group:
            ax.add_patch(
                Rectangle(
                    (x0 * size - 0.5, y0 * size - 0.5),
                    (x1 - x0) * size,
                    (y1 - y0) * size,
                    fill=False,
                    lw=0.8,
                    ls=(0, (3, 2)),
                    edgecolor=REGION_COLOURS.get(name, "white"),
                    clip_on=False,
                )
            )


def box_legend(fig: Figure, boxes: Mapping[str, list]) -> None:
    """A key to the dashed region boxes, below the panels."""
    handles = [
        Line2D(
            [], [], color=REGION_COLOURS.get(name, "white"), lw=0.8, ls=(0, (3, 2)), label=f"{name} region"
        )
        for name in boxes
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))


OVERLAY_ALPHA = 0.55
bare = image_panel  # the name the other report modules use


def overlay(
    ax: plt.Axes,
    face: np.ndarray,
    grid_map: np.ndarray,
    boxes: Mapping[str, list] | None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> AxesImage:
    """The aligned face with the map over it (and the region boxes); returns the map's image for a colour bar.

    With `vmax` the map keeps its values (bilinear between cell centres) on the scale [vmin, vmax];
    without, it is min-max scaled to [0, 1].
    """
    size = face.shape[0]
    ax.imshow(face, interpolation="bilinear")
    if vmax is None:
        img = ax.imshow(display_map(grid_map, size), cmap=HEAT_CMAP, alpha=OVERLAY_ALPHA, vmin=0, vmax=1)
    else:
        values = cv2.resize(grid_map.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        img = ax.imshow(values, cmap=HEAT_CMAP, alpha=OVERLAY_ALPHA, vmin=vmin or 0.0, vmax=vmax)
    if boxes:
        draw_boxes(ax, boxes, size)
    bare(ax)
    return img


DIRECTION_LABELS = {  # row labels: who looks where
    "static_to_dynamic": "face → motion\n(face tokens\nlook at flow)",
    "dynamic_to_static": "motion → face\n(flow tokens\nlook at face)",
}
DIRECTION_TITLES = {
    "static_to_dynamic": "face → motion",
    "dynamic_to_static": "motion → face",
}
RELATIVE_LABEL = "attention ÷ uniform"


def relative_map(grid_map: np.ndarray) -> np.ndarray:
    """A map as a multiple of the uniform map with the same mass: 1 everywhere when attention is even."""
    total = float(grid_map.sum())
    return grid_map * grid_map.size / total if total > 0 else np.zeros_like(grid_map)


def attention_overlays(
    reduced: list[ClipAttention],
    faces: Mapping[str, np.ndarray],
    boxes: Mapping[str, list],
    max_clips: int,
) -> Figure:
    """Per direction (rows): each clip's map over its middle face frame, then the mean over all clips.

    Maps are drawn relative to uniform attention (1 = even over the grid), on one colour scale per
    row; under each panel, the share of the map on the eyes and mouth.
    """
    directions = sorted({r.direction for r in reduced})
    clips = list(dict.fromkeys(r.clip for r in reduced))[:max_clips]
    ncols = len(clips) + 1
    fig, axes = subplots(DOUBLE, 0.35 + 1.55 * len(directions), len(directions), ncols, squeeze=False)
    mean_face = np.mean([faces[c] for c in faces], axis=0).astype(np.uint8)
    for r, (row, direction) in enumerate(zip(axes, directions, strict=True)):
        maps = {x.clip: x.spatial for x in reduced if x.direction == direction}
        mean_map = np.mean(list(maps.values()), axis=0)
        shown = [*(relative_map(maps[c]) for c in clips), relative_map(mean_map)]
        vmax = max(float(m.max()) for m in shown) or 1.0
        for ax, clip, rel in zip(row[:-1], clips, shown, strict=False):
            overlay(ax, faces[clip], rel, boxes, 0.0, vmax)
            if r == 0:
                ax.set_title(clip, fontsize=7)
            ax.set_xlabel(f"eyes+mouth {masses(maps[clip], boxes)['eyes+mouth'].mass_share:.0%}", fontsize=7)
        img = overlay(row[-1], mean_face, shown[-1], boxes, 0.0, vmax)
        share = masses(mean_map, boxes)["eyes+mouth"]
        if r == 0:
            row[-1].set_title(f"mean of {len(maps)} clips", fontsize=7)
        row[-1].set_xlabel(f"eyes+mouth {share.mass_share:.0%}\n(area {share.area_share:.0%})", fontsize=7)
        row[0].set_ylabel(DIRECTION_LABELS.get(direction, direction), fontsize=7)
        colorbar(fig, img, row.tolist(), RELATIVE_LABEL, fraction=0.03, aspect=10)
    box_legend(fig, boxes)
    return fig


def attention_over_time(reduced: list[ClipAttention]) -> Figure:
    """Attention per time step (face frames or flow tokens) for each clip and their mean, relative to uniform.

    Each step sits at the centre of the stretch of the clip it covers (the face frames and the flow
    tokens both split the clip into equal parts), so the x axis is the time in the clip as a
    fraction of its length whatever the clip's duration.
    """
    directions = sorted({r.direction for r in reduced})
    fig, axes = subplots(DOUBLE, 2.1, 1, len(directions), squeeze=False, sharey=True)
    grid = np.linspace(0.0, 1.0, 101)
    for ax, direction in zip(axes[0], directions, strict=True):
        series = [relative_map(r.temporal) for r in reduced if r.direction == direction]
        for s in series:
            ax.plot(_centres(len(s)), s, color="#999999", lw=0.6, alpha=0.8, marker=".", ms=2)
        lengths = {len(s) for s in series}
        if len(lengths) == 1:
            mean_x, mean_y = _centres(lengths.pop()), np.mean(series, axis=0)
        else:  # clips of different lengths: average on a common time grid
            mean_x = grid
            mean_y = np.mean([np.interp(grid, _centres(len(s)), s) for s in series], axis=0)
        ax.plot(mean_x, mean_y, color=PALETTE[0], lw=1.8, marker="o", ms=3)
        ax.axhline(1.0, color="black", lw=0.6, ls=":", zorder=0)
        steps = "face frames" if direction == "dynamic_to_static" else "flow tokens"
        n = max(len(s) for s in series)
        ax.set_title(f"{DIRECTION_TITLES.get(direction, direction)}: over {n} {steps}")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("time in clip (fraction of its length)")
    axes[0, 0].set_ylabel(RELATIVE_LABEL)
    fig.legend(
        handles=[
            Line2D([], [], color="#999999", lw=0.6, marker=".", ms=2, label="each clip"),
            Line2D([], [], color=PALETTE[0], lw=1.8, marker="o", ms=3, label="mean"),
            Line2D([], [], color="black", lw=0.6, ls=":", label="uniform"),
        ],
        loc="outside upper center",
        ncol=3,
    )
    return fig


def _centres(n: int) -> np.ndarray:
    """The centres of n equal parts of [0, 1]."""
    return (np.arange(n) + 0.5) / n


# ---------------------------------------------------------------- one clip, for predict --explain


def face_attention(
    attention: torch.Tensor, static_grid: tuple[int, int, int], dynamic_grid: tuple[int, ...], n_real: int
) -> np.ndarray:
    """Per face frame k, where its tokens look in the flow: [K, h, w] on the flow grid (each sums to 1).

    `attention` is one clip's static-to-dynamic weights [heads, Ls, Ld]; flow is computed on the
    aligned faces, so the flow grid lies on the face.
    """
    k, hs, ws = static_grid
    _, h, w = dynamic_grid
    weights = attention[:, :, :n_real].float().mean(0).cpu().numpy()  # (Ls, n_real)
    weights = weights.reshape(k, hs * ws, n_real // (h * w), h, w)
    return weights.mean(1).sum(1)  # (K, h, w)


def overlay_png(faces: np.ndarray, maps: np.ndarray, side: int = 224) -> bytes:
    """The K faces side by side, each under its attention map (magma, min-max over all maps), as PNG."""
    low, span = float(maps.min()), float(maps.max() - maps.min())
    scaled = (maps - low) / span if span > 1e-9 * max(abs(low), 1.0) else np.zeros_like(maps)
    tiles = []
    for face, grid in zip(faces, scaled, strict=True):
        face = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
        heat = cv2.resize(grid.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
        tiles.append(cv2.addWeighted(cv2.cvtColor(face, cv2.COLOR_RGB2BGR), 0.6, heat, 0.4, 0.0))
    ok, png = cv2.imencode(".png", np.concatenate(tiles, axis=1))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
