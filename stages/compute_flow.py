"""Stage compute-flow: dense optical flow between consecutive aligned faces of a shard, stored as int8.

Reads params `flow` and the shard's aligned faces; writes data/flow/<k>/<split>/<clip>.npz
(stages/preprocess/storage.py) and the shard's report. The estimators and the quantization live
in stages/preprocess/flow.py.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.params import ConfigError, from_section, require
from model.records import SPLITS, Clip
from stages import cli
from stages.common import (
    ClipResult,
    ShardRun,
    SkipClip,
    discard_on_failure,
    file_digest,
    output_key,
    run_shard_stage,
    shard_root,
    stored_key,
    summarize,
)

# The estimators and the storage (OpenCV: stages/preprocess/flow.py, storage.py) are imported where a
# clip needs them, so that --help never waits for them.
if TYPE_CHECKING:
    from stages.preprocess.flow import Estimator

READS = "params `flow`; the shard's clip list data/shards/<k>.csv and its faces data/faces/<k>/"
WRITES = "data/flow/<k>/<split>/<clip>.npz, reports/data/flow/<k>.json, reports/logs/compute_flow.log"

# Params that change what an output holds; paths, workers and validation thresholds do not.
KEY_PARAMS = (
    "method",
    "size",
    "bound",
    "farneback_levels",
    "farneback_winsize",
    "farneback_iterations",
    "dis_preset",
)


@dataclass(frozen=True)
class FlowParams:
    """The params section `flow`, checked whole before any clip."""

    method: str = "farneback"
    size: int = 56
    bound: float = 4.0
    farneback_levels: int = 3
    farneback_winsize: int = 5
    farneback_iterations: int = 3
    dis_preset: str = "medium"
    min_frames: int = 2
    faces_dir: str = "data/faces"
    out_dir: str = "data/flow"
    report: str = "reports/data/flow.json"
    workers: int = 0

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> FlowParams:
        from stages.preprocess.flow import DIS_PRESETS, METHODS, estimator_from

        p = from_section(cls, section, "flow")
        require(p.method in METHODS, "flow.method", p.method, f"one of {list(METHODS)}")
        require(p.size >= 8, "flow.size", p.size, "pixels >= 8")
        require(p.bound > 0, "flow.bound", p.bound, "pixels > 0 (flow is clipped to +-bound)")
        for key in ("farneback_levels", "farneback_winsize", "farneback_iterations"):
            require(getattr(p, key) >= 1, f"flow.{key}", getattr(p, key), "a whole number >= 1")
        require(p.dis_preset in DIS_PRESETS, "flow.dis_preset", p.dis_preset, f"one of {sorted(DIS_PRESETS)}")
        require(p.min_frames >= 2, "flow.min_frames", p.min_frames, "a count >= 2 (flow needs two faces)")
        require(p.workers >= 0, "flow.workers", p.workers, "a count >= 0 (0: one per core)")
        try:
            estimator_from(asdict(p))
        except (
            ValueError,
            RuntimeError,
        ) as exc:  # a method this OpenCV lacks (tvl1 without the contrib build)
            raise ConfigError(f"flow.method: {p.method!r} is not available here: {exc}") from None
        return p

    def key(self) -> dict[str, Any]:
        """What an output is made from, besides its faces (paths, workers and thresholds are not)."""
        return {k: getattr(self, k) for k in KEY_PARAMS}


@dataclass
class Job:
    """What every clip of the run needs: the `flow` params, the shard's folders, and the estimator,
    built once per worker process on first use (OpenCV's estimators do not pickle)."""

    params: FlowParams
    faces_dir: str
    out_dir: str
    _estimator: list[Estimator] = field(default_factory=list, repr=False)

    @property
    def estimator(self) -> Estimator:
        if not self._estimator:
            from stages.preprocess.flow import estimator_from

            self._estimator.append(estimator_from(asdict(self.params)))
        return self._estimator[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_estimator": []}


def flow_clip(clip: Clip, job: Job) -> ClipResult:
    """Compute one listed clip's flow unless an output with the same key is already there.

    A skipped clip loses any output an earlier run left, so no stale flow outlives its faces.
    """
    out = clip.path(job.out_dir)
    return discard_on_failure(out, lambda: _flow(clip, out, job))


def _flow(clip: Clip, out: Path, job: Job) -> ClipResult:
    from stages.preprocess.flow import clip_flow, magnitude_stats
    from stages.preprocess.storage import load_flow, read_faces, save_flow

    p = job.params
    source = clip.path(job.faces_dir)
    if not source.is_file():
        raise SkipClip("no aligned faces (align-faces left this clip out)")
    key = output_key(p.key(), source)
    if stored_key(out) == key:
        flow = load_flow(out)
        if len(flow.valid) + 1 < p.min_frames:
            raise SkipClip(f"too short: {len(flow.valid) + 1} faces, fewer than {p.min_frames}")
        stats = magnitude_stats(flow, p.bound)
        return ClipResult(clip.name, clip.split, "cached", stats=stats, digest=file_digest(out))
    start = time.perf_counter()
    faces, valid = read_faces(source, p.min_frames)
    flow = clip_flow(faces, job.estimator, p.size, p.bound, valid)
    save_flow(out, flow, key)
    stats = magnitude_stats(flow, p.bound) | {"seconds": round(time.perf_counter() - start, 3)}
    return ClipResult(clip.name, clip.split, "done", stats=stats, digest=file_digest(out))


def stage_report(results: list[ClipResult], params: dict[str, Any]) -> dict[str, Any]:
    """summarize() plus |flow| mean, median and p95 (px) per split over valid pairs, and the clipped
    share (one shard's clips, or all shards' when merged)."""
    from stages.preprocess.flow import HIST_BINS

    report = summarize(results)
    bound = params["bound"]
    edges = np.linspace(0.0, bound * np.sqrt(2), HIST_BINS + 1)
    magnitude = {}
    for split in SPLITS:
        stats = [r.stats for r in results if r.split == split and r.status != "skipped"]
        count = sum(s["magnitude_count"] for s in stats)
        if not count:
            continue
        hist = np.sum([s["histogram"] for s in stats], axis=0)
        cdf = np.cumsum(hist) / hist.sum()
        magnitude[split] = {
            "clips": len(stats),
            "mean": sum(s["magnitude_sum"] for s in stats) / count,
            "median": float(np.interp(0.5, cdf, edges[1:])),
            "p95": float(np.interp(0.95, cdf, edges[1:])),
            "clipped": float(np.mean([s["clipped"] for s in stats])),
            "valid_pair_ratio": sum(s["valid_pairs"] for s in stats) / max(1, sum(s["pairs"] for s in stats)),
        }
    report["magnitude_px"] = magnitude
    seconds = [r.stats["seconds"] for r in results if "seconds" in r.stats]
    if seconds:
        report["seconds_per_clip"] = float(np.mean(seconds))
    return report


def make_job(params: FlowParams, run: ShardRun, workers: int) -> Job:
    # This shard reads the faces of the same shard of align-faces (both follow data/shards/<k>.csv).
    return Job(params, str(shard_root(params.faces_dir, run.shard)), str(run.out_dir))


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(cli.shard_parser("stages.compute_flow", __doc__, READS, WRITES), argv)
    run_shard_stage(
        "compute_flow", "flow", FlowParams.from_params, flow_clip, make_job, stage_report, args.shard
    )


if __name__ == "__main__":
    main(sys.argv[1:])
