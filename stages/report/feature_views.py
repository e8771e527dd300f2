"""What the streams see and use: pooled embeddings in 2D, optical flow as colour beside the faces,
and what occluding a region or removing a stream does to the predictions (from analyze's outputs).

Embeddings (reports/embeddings/test.npz) are projected with PCA, and with t-SNE when there are
enough clips, coloured by each trait's true score: a stream that encodes a trait shows a gradient.
Flow is drawn in the usual HSV code: hue = direction, value = magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from model.records import TRAITS
from stages.report.attention_maps import box_legend, masses, overlay
from stages.report.style import DOUBLE, PALETTE, SCORE_CMAP, SINGLE, colorbar, image_panel, subplots

STREAM_KEYS = {"static": "static_emb", "dynamic": "dynamic_emb"}


def project(emb: np.ndarray, method: str, seed: int, perplexity: float) -> np.ndarray:
    """[N, D] -> [N, 2] by 'pca' or 'tsne' (standardised features; t-SNE perplexity capped below N)."""
    x = (emb - emb.mean(0)) / (emb.std(0) + 1e-8)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    with threadpool_limits(1):  # on a few dozen points, OpenMP threads only contend (seconds -> 0.4 s)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def embedding_projections(
    dump: Mapping[str, np.ndarray], tsne_min_clips: int, perplexity: float, seed: int
) -> tuple[Figure, dict[str, np.ndarray]]:
    """Rows: each stream x method; columns: traits coloured by their true score (one colour scale for
    all panels). Also returns the points. The projections' axes have no unit, so they carry no ticks."""
    columns = [str(c) for c in dump["columns"]]
    truth = np.asarray(dump["truth"])
    n = len(truth)
    methods = ["pca"] + (["tsne"] if n >= tsne_min_clips else [])
    rows = [(s, m) for s, key in STREAM_KEYS.items() if key in dump for m in methods]
    if not rows or n < 3:
        raise ValueError("need pooled embeddings of at least 3 clips")
    points = {f"{s}_{m}": project(np.asarray(dump[STREAM_KEYS[s]]), m, seed, perplexity) for s, m in rows}
    fig, axes = subplots(DOUBLE, 0.3 + 1.3 * len(rows), len(rows), len(TRAITS), squeeze=False)
    vmin, vmax = float(np.nanmin(truth)), float(np.nanmax(truth))
    for row_axes, (stream, method) in zip(axes, rows, strict=True):
        xy = points[f"{stream}_{method}"]
        for ax, trait in zip(row_axes, TRAITS, strict=True):
            sc = ax.scatter(
                xy[:, 0],
                xy[:, 1],
                c=truth[:, columns.index(trait)],
                s=5,
                cmap=SCORE_CMAP,
                vmin=vmin,
                vmax=vmax,
                edgecolors="none",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_box_aspect(1)
            if stream == rows[0][0] and method == rows[0][1]:
                ax.set_title(trait.capitalize())
        row_axes[0].set_ylabel(f"{stream} stream\n{METHOD_NAMES[method]}")
    colorbar(fig, sc, axes.ravel().tolist(), "true trait score (0-1)", fraction=0.025, aspect=30)
    return fig, points


METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE"}


def flow_to_rgb(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
    """[H, W, 2] flow (x, y) -> uint8 RGB: hue = direction, value = magnitude / max_magnitude (clipped)."""
    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)  # OpenCV hue runs 0..180
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max(max_magnitude, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flow_wheel(max_magnitude: float, size: int = 129) -> np.ndarray:
    """The key to flow_to_rgb: [size, size, 4] RGBA, the colour of each displacement (dx, dy) up to
    `max_magnitude` around the centre (image axes: y down), transparent outside the disc."""
    r = np.linspace(-max_magnitude, max_magnitude, size, dtype=np.float32)
    dx, dy = np.meshgrid(r, r)
    rgb = flow_to_rgb(np.stack([dx, dy], axis=-1), max_magnitude)
    alpha = np.where(np.hypot(dx, dy) <= max_magnitude, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def sample_steps(
    faces: np.ndarray, flow: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`steps` evenly spaced flow steps of a clip: (faces [s, S, S, 3], flow [s, F, F, 2], step indices [s]).

    `faces` uint8 [T, S, S, 3], `flow` in pixels [T-1, F, F, 2]; each face is the frame the flow leaves.
    """
    idx = np.linspace(0, len(flow) - 1, min(steps, len(flow))).round().astype(int)
    return faces[idx], flow[idx], idx


def flow_panel(
    shown: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], fps: float | None = None
) -> Figure:
    """For each clip (a pair of rows): its sampled face frames and the colour-coded flow that leaves each,
    with a colour-wheel key (hue: direction, brightness: speed) in pixels per step at the flow's size.

    `shown` maps a name to sample_steps' (faces, flow, indices); `fps` (the frame rate the faces were
    sampled at) puts each column's time in seconds, else its frame index. One magnitude scale (the
    99th percentile over the shown clips) serves every panel.
    """
    mags = np.concatenate([np.linalg.norm(f, axis=-1).ravel() for _, f, _ in shown.values()])
    scale = float(np.percentile(mags, 99)) if mags.size else 1.0
    scale = scale if scale > 0 else 1.0
    cols = max(len(i) for _, _, i in shown.values())
    flow_side = next(iter(shown.values()))[1].shape[1]
    same_steps = len({tuple(i) for _, _, i in shown.values()}) == 1
    fig = plt.figure(figsize=(DOUBLE, 0.3 + 2.0 * len(shown)), layout="constrained")
    grid, side = fig.subfigures(1, 2, width_ratios=[cols, 1.3], wspace=0.0)
    axes = grid.subplots(2 * len(shown), cols, squeeze=False)
    for r, (name, (faces, flow, idx)) in enumerate(shown.items()):
        for c in range(cols):
            for ax in (axes[2 * r, c], axes[2 * r + 1, c]):
                image_panel(ax)
                if c >= len(idx):
                    ax.axis("off")
            if c >= len(idx):
                continue
            axes[2 * r, c].imshow(faces[c], interpolation="bilinear")
            axes[2 * r + 1, c].imshow(flow_to_rgb(flow[c], scale), interpolation="bilinear")
            if r == 0 or not same_steps:
                when = f"{idx[c] / fps:.1f} s" if fps else f"frame {idx[c]}"
                axes[2 * r, c].set_title(when, fontsize=7)
        axes[2 * r, 0].set_ylabel(name, fontsize=7)
        axes[2 * r + 1, 0].set_ylabel("flow to the\nnext frame", fontsize=7)
    _flow_key(side, scale, flow_side, fps)
    return fig


def _flow_key(side: Any, scale: float, flow_side: int, fps: float | None) -> None:
    """The colour wheel of flow_to_rgb with its displacement axes, and what the colours mean, in `side`."""
    key, note = side.subplots(2, 1, height_ratios=[1.9, max(side.get_figure().get_figheight() - 2.2, 0.8)])
    step = f"{1 / fps:.2g}-s step" if fps else "frame step"
    key.imshow(flow_wheel(scale), extent=(-scale, scale, scale, -scale), interpolation="bilinear")
    key.set_aspect("equal")
    key.grid(False)
    for spine in key.spines.values():
        spine.set_visible(False)
    tick = _round_down(scale)
    key.set_xticks([-tick, 0.0, tick], [f"{-tick:g}", "0", f"{tick:g}"])
    key.set_yticks([-tick, 0.0, tick], [f"{-tick:g}", "0", f"{tick:g}"])
    key.tick_params(length=2, width=0.5, pad=1)
    key.set_title("flow key", fontsize=7)
    key.set_xlabel(f"dx (px per\n{step})", fontsize=7)
    key.set_ylabel("dy (px, down)", fontsize=7, labelpad=1)
    note.axis("off")
    note.text(
        0.5,
        1.0,
        f"hue: direction\nbrightness: speed,\nfull at {scale:.2f} px\nper {step}\n(flow at {flow_side} px)",
        transform=note.transAxes,
        ha="center",
        va="top",
        fontsize=7,
    )


def _round_down(x: float) -> float:
    """x rounded down to one significant digit (2.85 -> 2, 0.37 -> 0.3): a tick that stays inside the wheel."""
    if x <= 0:
        return 1.0
    unit = 10.0 ** np.floor(np.log10(x))
    return float(np.floor(x / unit) * unit)


OCCLUDED_LABELS = {"static": "face cells\nblanked", "dynamic": "flow cells\nblanked"}


def occlusion_figure(
    maps: dict[str, np.ndarray], columns: tuple[str, ...], face: np.ndarray, boxes: dict[str, list] | None
) -> Figure:
    """Rows: streams; columns: traits; each the occlusion map over the mean aligned face, in its own
    unit (the mean absolute change of the prediction, on the 0-1 score scale), one colour scale per row."""
    traits = [c for c in TRAITS if c in columns]
    fig, axes = subplots(DOUBLE, 0.45 + 1.5 * len(maps), len(maps), len(traits), squeeze=False)
    for r, (row, (stream, m)) in enumerate(zip(axes, maps.items(), strict=True)):
        grids = [np.asarray(m[columns.index(t)], dtype=np.float64) for t in traits]
        vmax = max(float(g.max()) for g in grids) or 1.0
        for ax, trait, grid in zip(row, traits, grids, strict=True):
            img = overlay(ax, face, grid, boxes, 0.0, vmax)
            if r == 0:
                ax.set_title(trait.capitalize())
            if boxes:
                ax.set_xlabel(f"eyes+mouth {masses(grid, boxes)['eyes+mouth'].mass_share:.0%}", fontsize=7)
        row[0].set_ylabel(OCCLUDED_LABELS.get(stream, f"{stream}\noccluded"))
        colorbar(fig, img, row.tolist(), "mean |Δ prediction|\n(score, 0-1)", fraction=0.03, aspect=10)
    if boxes:
        box_legend(fig, boxes)
    return fig


def stream_importance_figure(streams: Mapping[str, Any], baseline: Mapping[str, float] | None) -> Figure:
    """1-MAE per trait with both streams and with each stream's input taken away, beside the mean
    baseline; one column wide, bars from zero, the legend above the axes.

    `streams` is analyze's importance.json "streams" entry: "full" and "without_<stream>", each
    {output: 1-MAE, ..., "mean": ...}, with "method" ("permutation": the stream's input permuted across
    clips; else zeroed) and, for permutations, "drop_<stream>_sd" (drawn as whiskers); `baseline` has
    the same keys.
    """
    names = list(streams["full"])
    verb = "permuted" if streams.get("method") == "permutation" else "zeroed"
    rows = {"both streams": np.array([streams["full"][n] for n in names])}
    spread: dict[str, np.ndarray] = {}
    for key, scores in streams.items():
        if key.startswith("without_") and isinstance(scores, Mapping):
            stream = key.removeprefix("without_")
            label = f"{stream} {verb}"
            rows[label] = np.array([scores[n] for n in names])
            sd = streams.get(f"drop_{stream}_sd")
            if isinstance(sd, Mapping):
                spread[label] = np.array([sd[n] for n in names])
    if baseline is not None:
        rows["mean baseline"] = np.array([baseline[n] for n in names])
    colours = [PALETTE[0], PALETTE[1], PALETTE[2], "#999999"]
    fig, ax = subplots(SINGLE, 2.4)
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    for i, (label, v) in enumerate(rows.items()):
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            v,
            width,
            yerr=spread.get(label),
            error_kw={"elinewidth": 0.6, "capsize": 1.0},
            label=label,
            color=colours[i % len(colours)],
        )
    ax.set_xticks(x, [n[0].upper() if n != "mean" else "mean" for n in names])
    ax.grid(False, axis="x")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("1-MAE")
    ax.set_xlabel("trait")
    fig.legend(loc="outside upper center", ncol=2)
    return fig
