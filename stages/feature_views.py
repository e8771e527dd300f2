"""What the streams see and make: pooled embeddings in 2D, and optical flow as colour beside the faces.

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

from stages.attention_maps import bare
from stages.common import TRAITS
from stages.figures import trait_label

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


def flow_panel(clips: Mapping[str, tuple[np.ndarray, np.ndarray]], steps: int) -> Figure:
    """For each clip (a pair of rows): `steps` face frames and the colour-coded flow that leaves each.

    `clips` maps a name to (faces uint8 [T, S, S, 3], flow in pixels float [T-1, F, F, 2]). One
    magnitude scale (the 99th percentile over the shown clips) serves every panel.
    """
    shown = {}
    for name, (faces, flow) in clips.items():
        idx = np.linspace(0, len(flow) - 1, min(steps, len(flow))).round().astype(int)
        shown[name] = (faces[idx], flow[idx], idx)
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
