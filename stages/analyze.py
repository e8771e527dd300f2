"""Stage analyze: what the trained network relies on, measured on one split, for the plot stage to draw.

Reads params `analyze` (and `faces.margin`, which places the eye and mouth regions), the best
checkpoint and the split's faces and flow; writes reports/importance.json (1-MAE with each
stream's input permuted across clips, occlusion maps over faces and flow with their share on the eyes and
mouth) and reports/analysis/samples.npz (the mean face under the occlusion maps, and a few clips'
faces and flow fields for the flow figure). With `analyze.enabled: false` it writes only a note
saying so. Plot then reads reports/ only: no checkpoint, no data folder.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from model.params import from_section, require
from model.records import SPLITS, TRAITS
from stages import cli
from stages.common import load_params, read_labels, resolve_workers, save_npz, setup_logging, write_json
from stages.evaluate import split_dataset

# torch, matplotlib and the libraries on them (model/, stages/report/) are imported where they are
# used, so that --help never waits for them.
if TYPE_CHECKING:
    from model.data import ClipDataset

log = logging.getLogger(__name__)

READS = (
    "params `analyze` and faces.margin; data/model/best.pt, data/raw/labels.csv, and the split's "
    "data/faces/ and data/flow/"
)
WRITES = "reports/importance.json, reports/analysis/samples.npz, reports/logs/analyze.log"


@dataclass
class AnalyzeConfig:
    """The params section `analyze`."""

    enabled: bool = True
    split: str = "test"
    checkpoint: str = "data/model/best.pt"
    faces_dir: str = "data/faces"
    flow_dir: str = "data/flow"
    labels: str = "data/raw/labels.csv"
    batch_size: int = 16
    permutations: int = 10  # stream importance: random permutations of a stream's input across clips
    seed: int = 0
    occlusion_clips: int = 4
    occlusion_cells: int = 7  # occlusion grid side over faces and flow
    flow_clips: int = 3  # clips whose faces and flow the flow figure shows
    flow_steps: int = 6  # flow fields per clip
    importance: str = "reports/importance.json"
    samples: str = "reports/analysis/samples.npz"

    @classmethod
    def from_params(cls, d: dict[str, Any] | None) -> AnalyzeConfig:
        cfg = from_section(cls, d, "analyze")
        require(cfg.split in SPLITS, "analyze.split", cfg.split, f"one of {list(SPLITS)}")
        for key in ("batch_size", "permutations", "occlusion_clips", "occlusion_cells", "flow_steps"):
            require(getattr(cfg, key) >= 1, f"analyze.{key}", getattr(cfg, key), "a whole number >= 1")
        require(cfg.flow_clips >= 0, "analyze.flow_clips", cfg.flow_clips, "a count >= 0")
        return cfg


def mean_baseline(
    dataset: ClipDataset, train_truth: np.ndarray, columns: tuple[str, ...]
) -> np.ndarray | None:
    """1-MAE per output (and the mean over the traits) of predicting the training mean for every clip."""
    if not len(train_truth):
        return None
    acc = 1.0 - np.abs(dataset.targets - train_truth.mean(0)).mean(0)
    return np.append(acc, acc[[columns.index(t) for t in TRAITS]].mean())


def occlusion(model: Any, dataset: ClipDataset, cfg: AnalyzeConfig, boxes: dict) -> tuple[dict, np.ndarray]:
    """Occlusion maps over the first clips, their report entry, and the mean face they lie on."""
    from model.data import collate
    from stages.report import attention_maps as am
    from stages.report import importance

    subset = [dataset[i] for i in range(min(cfg.occlusion_clips, len(dataset)))]
    maps = importance.occlusion_maps(model, [collate(subset, dataset.cfg)], cfg.occlusion_cells)
    faces = np.stack([s.faces.numpy() for s in subset]).astype(np.float64)  # (n, K, 3, S, S) uint8 values
    mean_face = faces.mean(axis=(0, 1)).transpose(1, 2, 0).round().astype(np.uint8)
    columns = dataset.cfg.label_columns
    entry = {
        "clips": len(subset),
        "cells": cfg.occlusion_cells,
        "maps": {s: {c: m[j].tolist() for j, c in enumerate(columns)} for s, m in maps.items()},
        "region_share": {
            s: {
                c: {k: v.mass_share for k, v in am.masses(m[j], boxes).items()} for j, c in enumerate(columns)
            }
            for s, m in maps.items()
        },
    }
    return entry, mean_face


def flow_samples(dataset: ClipDataset, cfg: AnalyzeConfig) -> dict[str, np.ndarray]:
    """The first clips' stored faces and flow (pixels) at `flow_steps` evenly spaced steps."""
    from stages.report.feature_views import sample_steps

    out: dict[str, np.ndarray] = {}
    names = []
    for i, source in enumerate(dataset.sources[: cfg.flow_clips]):
        with np.load(source.faces) as f, np.load(source.flow) as g:
            flow = g["flow"].astype(np.float32) * float(g["scale"])
            faces, fields, idx = sample_steps(f["faces"][: len(flow) + 1], flow, cfg.flow_steps)
        out |= {f"faces_{i}": faces, f"flow_{i}": fields, f"steps_{i}": idx}
        names.append(source.clip.name)
    out["flow_clips"] = np.array(names)
    return out


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.analyze", __doc__, READS, WRITES), argv)
    import torch

    from model.data import make_loader
    from model.training import load_checkpoint
    from stages.report import attention_maps as am
    from stages.report import importance

    setup_logging("analyze")
    start = time.perf_counter()
    params = load_params()
    cfg = AnalyzeConfig.from_params(params.get("analyze"))
    if not cfg.enabled:
        write_json(cfg.importance, {"skipped": "analyze.enabled is false"})
        save_npz(cfg.samples, skipped=np.array("analyze.enabled is false"))
        return
    torch.set_num_threads(resolve_workers(0))
    model, configs, _ = load_checkpoint(cfg.checkpoint, "cpu")
    labels = read_labels(cfg.labels)
    dataset, _ = split_dataset(labels, cfg.split, cfg.faces_dir, cfg.flow_dir, configs.data)
    if len(dataset) < 2:
        raise SystemExit(f"analyze: fewer than two usable {cfg.split} clips")
    columns = tuple(configs.data.label_columns)

    loader = make_loader(dataset, cfg.batch_size, False, 0, 0)
    result = importance.stream_importance(model, loader, columns, repeats=cfg.permutations, seed=cfg.seed)
    report: dict[str, Any] = {"split": cfg.split, "clips": len(dataset), "streams": result.to_dict()}
    train_truth = labels.loc[labels["split"] == "train", list(columns)].to_numpy(np.float64)
    baseline = mean_baseline(dataset, train_truth, columns)
    if baseline is not None:
        report["baseline"] = dict(zip([*columns, "mean"], baseline.tolist(), strict=True))
    boxes = am.region_boxes(float(params.get("faces", {}).get("margin", 0.0)), am.RegionSpec())
    report["occlusion"], mean_face = occlusion(model, dataset, cfg, boxes)
    write_json(cfg.importance, report)
    save_npz(cfg.samples, compress=True, mean_face=mean_face, **flow_samples(dataset, cfg))
    log.info("analyze done in %.1f s: %d %s clips", time.perf_counter() - start, len(dataset), cfg.split)


if __name__ == "__main__":
    main(sys.argv[1:])
