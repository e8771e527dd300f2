"""What the streams see and use: pooled embeddings in 2D, optical flow as colour beside the faces,
and what occluding a region or removing a stream does to the predictions (from analyze's outputs).

Embeddings (reports/embeddings/test.npz) are projected with PCA, and with t-SNE when there are
enough clips, coloured by each trait's true score: a stream that encodes a trait shows a gradient.
Flow is drawn in the usual HSV code: hue = direction, value = magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from model.records import TRAITS
from stages.report.attention_maps import bare, masses, overlay
from stages.report.figures import PALETTE, trait_label

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
    """Rows: each stream x method; columns: traits coloured by their true score. Also returns the points."""
    columns = [str(c) for c in dump["columns"]]
    truth = np.asarray(dump["truth"])
    n = len(truth)
    methods = ["pca"] + (["tsne"] if n >= tsne_min_clips else [])
    rows = [(s, m) for s, key in STREAM_KEYS.items() if key in dump for m in methods]
    if not rows or n < 3:
        raise ValueError("need pooled embeddings of at least 3 clips")
    points = {f"{s}_{m}": project(np.asarray(dump[STREAM_KEYS[s]]), m, seed, perplexity) for s, m in rows}
    fig, axes = plt.subplots(
        len(rows), len(TRAITS), figsize=(2.0 * len(TRAITS), 2.0 * len(rows)), squeeze=False
    )
    for row_axes, (stream, method) in zip(axes, rows, strict=True):
        xy = points[f"{stream}_{method}"]
        for ax, trait in zip(row_axes, TRAITS, strict=True):
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=truth[:, columns.index(trait)], s=9, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if stream == rows[0][0] and method == rows[0][1]:
                ax.set_title(trait_label(trait))
        row_axes[0].set_ylabel(f"{stream}\n{method.upper() if method == 'pca' else 't-SNE'}")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="true score")
    return fig, points


def flow_to_rgb(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
    """[H, W, 2] flow (x, y) -> uint8 RGB: hue = direction, value = magnitude / max_magnitude (clipped)."""
    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)  # OpenCV hue runs 0..180
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max(max_magnitude, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def sample_steps(
    faces: np.ndarray, flow: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`steps` evenly spaced flow steps of a clip: (faces [s, S, S, 3], flow [s, F, F, 2], step indices [s]).

    `faces` uint8 [T, S, S, 3], `flow` in pixels [T-1, F, F, 2]; each face is the frame the flow leaves.
    """
    idx = np.linspace(0, len(flow) - 1, min(steps, len(flow))).round().astype(int)
    return faces[idx], flow[idx], idx


def flow_panel(shown: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Figure:
    """For each clip (a pair of rows): its sampled face frames and the colour-coded flow that leaves each.

    `shown` maps a name to sample_steps' (faces, flow, indices). One magnitude scale (the 99th
    percentile over the shown clips) serves every panel.
    """
    mags = np.concatenate([np.linalg.norm(f, axis=-1).ravel() for _, f, _ in shown.values()])
    scale = float(np.percentile(mags, 99)) if mags.size else 1.0
    cols = max(len(i) for _, _, i in shown.values())
    fig, axes = plt.subplots(2 * len(shown), cols, figsize=(1.4 * cols, 2.8 * len(shown)), squeeze=False)
    for r, (name, (faces, flow, idx)) in enumerate(shown.items()):
        for c in range(cols):
            for ax in (axes[2 * r, c], axes[2 * r + 1, c]):
                bare(ax)
                if c >= len(idx):
                    ax.axis("off")
            if c >= len(idx):
                continue
            axes[2 * r, c].imshow(faces[c])
            axes[2 * r + 1, c].imshow(flow_to_rgb(flow[c], scale))
            axes[2 * r, c].set_title(f"t={idx[c]}", fontsize=7)
        axes[2 * r, 0].set_ylabel(name, fontsize=7)
        axes[2 * r + 1, 0].set_ylabel("flow", fontsize=7)
    fig.suptitle(f"optical flow (hue: direction, brightness: magnitude up to {scale:.2f} px)", fontsize=8)
    fig.tight_layout()
    return fig


def occlusion_figure(
    maps: dict[str, np.ndarray], columns: tuple[str, ...], face: np.ndarray, boxes: dict[str, list] | None
) -> Figure:
    """Rows: streams; columns: traits; each the occlusion map over the mean aligned face."""
    traits = [c for c in TRAITS if c in columns]
    fig, axes = plt.subplots(
        len(maps), len(traits), figsize=(1.9 * len(traits), 2.0 * len(maps)), squeeze=False
    )
    for row, (stream, m) in zip(axes, maps.items(), strict=True):
        for ax, trait in zip(row, traits, strict=True):
            grid = m[columns.index(trait)]
            overlay(ax, face, grid, boxes)
            share = masses(grid, boxes)["eyes+mouth"].mass_share if boxes else float("nan")
            ax.set_title(f"{trait_label(trait)}\neyes+mouth {share:.0%}", fontsize=7)
        row[0].set_ylabel(f"{stream} occluded", fontsize=8)
    fig.suptitle("occlusion: mean |Δ prediction| when a cell is blanked", fontsize=8)
    fig.tight_layout()
    return fig


def stream_importance_figure(
    streams: Mapping[str, Mapping[str, float]], baseline: Mapping[str, float] | None
) -> Figure:
    """1-MAE per trait with both streams and with each removed, beside the mean baseline.

    `streams` is analyze's importance.json "streams" entry: "full" and "without_<stream>", each
    {output: 1-MAE, ..., "mean": ...}; `baseline` has the same keys.
    """
    names = list(streams["full"])
    rows = {"both streams": np.array([streams["full"][n] for n in names])}
    for key, scores in streams.items():
        if key.startswith("without_"):
            rows[f"without {key.removeprefix('without_')}"] = np.array([scores[n] for n in names])
    if baseline is not None:
        rows["mean baseline"] = np.array([baseline[n] for n in names])
    colours = [PALETTE[0], PALETTE[1], PALETTE[2], "#999999"]
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    for i, (label, v) in enumerate(rows.items()):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, v, width, label=label, color=colours[i % len(colours)])
    ax.set_xticks(x, [n[0].upper() if n != "mean" else "mean" for n in names])
    values = np.concatenate(list(rows.values()))
    ax.set_ylim(max(0.0, float(np.nanmin(values)) - 0.02), min(1.0, float(np.nanmax(values)) + 0.03))
    ax.set_ylabel("1-MAE (test)")
    ax.set_title("stream importance: input permuted across clips")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
