"""Plumbing shared by the stages: params, logging, atomic writes, the clip index, per-clip runs.

The per-clip stages (extract-frames, align-faces, compute-flow) follow one pattern: map a pure
function over the clips with a process pool, write each clip's output atomically with a key
that says which params and which input made it, skip clips whose output already carries the
right key (so an interrupted run resumes), and count every skipped clip with its reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from model.atomic import TMP_MARK, atomic_path
from model.config import from_section
from model.records import SPLITS, Clip, ClipSource

RAW_DIR = Path("data/raw")
LABELS_CSV = RAW_DIR / "labels.csv"
REPORTS_DIR = Path("reports")

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")


# ---------------------------------------------------------------- params and logging


def load_params(section: str | None = None, path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file, or one top-level section of it."""
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f)
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"params file {path} has no section {section!r}")
    return params[section]


def setup_logging(stage: str, log_dir: str | Path = REPORTS_DIR / "logs") -> logging.Logger:
    """Log to stderr and to reports/logs/<stage>.log (overwritten each run)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in (
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(Path(log_dir) / f"{stage}.log", mode="w", encoding="utf-8"),
    ):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    return logging.getLogger(f"stages.{stage}")


def resolve_workers(workers: int) -> int:
    """0 means one worker per available core."""
    if workers and workers > 0:
        return int(workers)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


# ---------------------------------------------------------------- atomic writes


def save_npz(path: str | Path, compress: bool = False, **arrays: Any) -> None:
    """Write an npz atomically; np.savez would append .npz to a temporary name, so pass a handle."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def remove_partials(root: str | Path) -> int:
    """Delete temporary files an interrupted run left behind; returns how many."""
    removed = 0
    for tmp in Path(root).rglob(f"*{TMP_MARK}*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


# ---------------------------------------------------------------- hashing


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def output_key(params: dict[str, Any], input_path: str | Path) -> str:
    """What an output was made from: the stage's params and its input's bytes."""
    return hashlib.sha256(f"{params_digest(params)}:{file_digest(input_path)}".encode()).hexdigest()[:24]


def stored_key(npz_path: str | Path) -> str | None:
    """The key inside a finished output, or None when it is missing or unreadable."""
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            return str(z["key"])
    except Exception:  # noqa: BLE001 - any unreadable file simply counts as not done
        return None


# ---------------------------------------------------------------- the clip index


def read_labels(path: str | Path = LABELS_CSV) -> pd.DataFrame:
    """labels.csv as a frame; `clip` stays a string even for names that look numeric."""
    return pd.read_csv(path, dtype={"clip": str, "split": str})


def read_clips(path: str | Path = LABELS_CSV) -> list[Clip]:
    labels = read_labels(path)
    return [Clip(name, split) for name, split in zip(labels["clip"], labels["split"], strict=True)]


# ---------------------------------------------------------------- per-clip runs


class SkipClip(Exception):
    """A clip that cannot be processed; the message is the reason recorded in the report."""


@dataclass
class ClipResult:
    clip: str
    split: str
    status: str  # "done" | "cached" | "skipped"
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    digest: str = ""


class _Worker:
    """The state of the running process's clips: what run_clips hands every call of `work`.

    One slot per process, filled by the pool's initializer (or directly when run serially), so a
    worker builds its expensive objects (a face detector, a flow estimator) once, not per clip.
    """

    state: Any = None

    @classmethod
    def set(cls, state: Any) -> None:
        cls.state = state


def worker_state() -> Any:
    """The state run_clips handed this process's clips (None outside a run)."""
    return _Worker.state


def run_clips(
    work: Callable[[Clip, S], ClipResult],
    clips: Iterable[Clip],
    workers: int,
    desc: str,
    state: S = None,
) -> list[ClipResult]:
    """Map `work(clip, state)` over the clips with a process pool and a progress bar.

    `work` must be a module-level function and `state` picklable: each worker process gets its
    own copy, which may build what it needs lazily. An exception in `work` skips that clip only.
    """
    clips = list(clips)
    results: list[ClipResult] = []
    if workers <= 1 or len(clips) <= 1:
        _Worker.set(state)
        for clip in tqdm(clips, desc=desc, unit="clip", mininterval=1.0):
            results.append(_guarded(work, clip))
        return results
    with ProcessPoolExecutor(max_workers=workers, initializer=_Worker.set, initargs=(state,)) as pool:
        futures = {pool.submit(_guarded, work, clip): clip for clip in clips}
        for future in tqdm(
            as_completed(futures), total=len(futures), desc=desc, unit="clip", mininterval=1.0
        ):
            results.append(future.result())
    order = {c.name: i for i, c in enumerate(clips)}
    results.sort(key=lambda r: order[r.clip])
    return results


def _guarded(work: Callable[[Clip, Any], ClipResult], clip: Clip) -> ClipResult:
    try:
        return work(clip, _Worker.state)
    except SkipClip as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad clip must never end the run
        reason = f"{type(exc).__name__}: {exc}"
    logging.getLogger(__name__).warning("skipped %s/%s: %s", clip.split, clip.name, reason)
    return ClipResult(clip.name, clip.split, "skipped", reason)


def summarize(results: list[ClipResult]) -> dict[str, Any]:
    """Counts per split and status, the skipped clips with their reasons, output digests."""
    counts: dict[str, dict[str, int]] = {}
    for r in results:
        counts.setdefault(r.split, {"done": 0, "cached": 0, "skipped": 0})[r.status] += 1
    return {
        "clips": len(results),
        "ok": sum(r.status != "skipped" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        "counts": counts,
        "skipped_clips": [
            {"clip": r.clip, "split": r.split, "reason": r.reason} for r in results if r.status == "skipped"
        ],
        "digests": {r.clip: r.digest for r in results if r.digest},
    }


def prepare_outputs(labels: str | Path, out_dir: str | Path) -> tuple[list[Clip], int, int]:
    """The clips listed in labels.csv, after removing from `out_dir` the partial files an
    interrupted run left and the outputs of clips no longer listed; returns (clips, removed, pruned)."""
    out_dir = Path(out_dir)
    removed = remove_partials(out_dir) if out_dir.exists() else 0
    clips = read_clips(labels)
    pruned = prune_outputs(out_dir, [c.path(out_dir) for c in clips]) if out_dir.exists() else 0
    return clips, removed, pruned


def prune_outputs(root: str | Path, keep: Iterable[Path]) -> int:
    """Remove per-clip outputs of clips no longer in the index (persisted outs outlive them)."""
    keep = {Path(p).resolve() for p in keep}
    removed = 0
    for path in Path(root).rglob("*.npz"):
        if path.resolve() not in keep:
            path.unlink()
            removed += 1
    return removed


def result_dict(r: ClipResult) -> dict[str, Any]:
    return asdict(r)


# ---------------------------------------------------------------- shards
# A per-clip stage runs as N shards (dvc.yaml's matrix over shards.ids): shard k reads the clip list
# <shards.dir>/<k>.csv and writes under <out_dir>/<k>/<split>/<clip>.npz; readers find a clip's file
# in whichever shard holds it with clip_file().


def shard_of(name: str, shards: int) -> int:
    """The shard of a clip: crc32 of its name mod the shard count, the same on every machine and run,
    and untouched by other clips coming or going."""
    return zlib.crc32(name.encode("utf-8")) % shards


@dataclass(frozen=True)
class Shards:
    """The shards section of params: shard ids 0..N-1 and where each shard's clip list lies."""

    ids: tuple[int, ...] = (0,)
    dir: str = "data/shards"
    workers: int = 0

    @property
    def count(self) -> int:
        return len(self.ids)

    def manifest(self, shard: int) -> Path:
        return Path(self.dir) / f"{shard}.csv"

    @classmethod
    def from_params(cls, section: dict[str, Any] | None) -> Shards:
        section = dict(section or {})
        ids = section.pop("ids", (0,))
        if not isinstance(ids, list | tuple):
            raise ValueError(f"shards.ids must be a list [0, ..., N-1], got {ids!r}")
        ids = tuple(int(i) for i in ids)
        if ids != tuple(range(len(ids))) or not ids:
            raise ValueError(f"shards.ids must be 0..N-1 in order, got {list(ids)}")
        return from_section(cls, {"ids": ids, **section}, "shards")


def shard_root(root: str | Path, shard: int) -> Path:
    """A shard's own output folder under a stage's root."""
    return Path(root) / str(shard)


def shard_report(report: str | Path, shard: int) -> Path:
    """A shard's report beside the stage's merged one: reports/data/frames.json -> reports/data/frames/<k>.json."""
    return Path(report).with_suffix("") / f"{shard}.json"


def parse_shard(argv: list[str] | None, shards: Shards) -> int:
    """The --shard K of a per-clip stage's command line (default 0), checked against shards.ids."""
    parser = argparse.ArgumentParser(description="run one shard of a per-clip stage")
    parser.add_argument("--shard", type=int, default=0, help="shard index, one of shards.ids")
    shard = parser.parse_args(argv or []).shard
    if shard not in shards.ids:
        parser.error(f"--shard {shard} is not one of shards.ids {list(shards.ids)}")
    return shard


def shard_dirs(root: str | Path) -> list[Path]:
    """The shard folders <root>/<k>/ that exist, in shard order."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.isdigit() and p.is_dir()), key=lambda p: int(p.name))


def clip_file(root: str | Path, clip: Clip, suffix: str = ".npz") -> Path:
    """A clip's file under a sharded stage root, whichever shard holds it; where none does, the
    unsharded path <root>/<split>/<clip> (which may not exist either)."""
    for folder in shard_dirs(root):
        path = clip.path(folder, suffix)
        if path.exists():
            return path
    return clip.path(root, suffix)


def clip_sources(
    clips: Iterable[Clip], faces_dir: str | Path, flow_dir: str | Path
) -> tuple[list[ClipSource], dict[str, str]]:
    """Where each clip's faces and flow files lie, for the clips that have both; the others with
    the reason."""
    keep, missing = [], {}
    for clip in clips:
        faces, flow = clip_file(faces_dir, clip), clip_file(flow_dir, clip)
        absent = [what for what, path in (("faces", faces), ("flow", flow)) if not path.exists()]
        if absent:
            missing[clip.name] = f"no {' and '.join(absent)} file"
        else:
            keep.append(ClipSource(clip, faces, flow))
    return keep, missing


def remove_stale_shards(root: str | Path, shards: int) -> int:
    """Remove what no current shard owns under a stage root: shards k >= N (files or folders named
    k) left by a run with more shards, and split folders of the unsharded layout. Returns how many."""
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    for path in root.iterdir():
        stem = path.name.split(".")[0]
        if (stem.isdigit() and int(stem) >= shards) or (path.is_dir() and path.name in SPLITS):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed += 1
    return removed


@dataclass(frozen=True)
class ShardRun:
    """One shard's run of a per-clip stage: its clips and its own output folder and report."""

    shard: int
    shards: Shards
    clips: list[Clip]
    out_dir: Path
    report: Path
    removed: int  # partial files and stale outputs removed before the run
    log_name: str
    started: float = field(default_factory=time.perf_counter)  # the clips' work starts after set-up


def start_shard(stage: str, out_dir: str | Path, report: str | Path, argv: list[str] | None) -> ShardRun:
    """Parse --shard, set up logging (reports/logs/<stage>.log, or <stage>-<k>.log with several
    shards), clear what no shard owns, and list this shard's clips after prepare_outputs."""
    shards = Shards.from_params(load_params().get("shards"))
    shard = parse_shard(argv, shards)
    log_name = stage if shards.count == 1 else f"{stage}-{shard}"
    logger = setup_logging(log_name)
    stale = remove_stale_shards(out_dir, shards.count) + remove_stale_shards(
        Path(report).with_suffix(""), shards.count
    )
    own = shard_root(out_dir, shard)
    clips, removed, pruned = prepare_outputs(shards.manifest(shard), own)
    logger.info(
        "shard %d of %d: %d clips; removed %d partial, %d stale outputs and %d stale shards",
        shard, shards.count, len(clips), removed, pruned, stale,
    )  # fmt: skip
    return ShardRun(
        shard, shards, clips, own, shard_report(report, shard), removed + pruned + stale, log_name
    )


def write_shard_report(run: ShardRun, report: dict[str, Any], results: list[ClipResult]) -> None:
    """The shard's report with its seconds and every clip's result, from which stages.data_reports
    merges the stage's report."""
    extra = {
        "seconds": round(time.perf_counter() - run.started, 2),
        "shard": run.shard,
        "shards": run.shards.count,
        "results": [result_dict(r) for r in results],
    }
    write_json(run.report, report | extra)


def run_shard_stage(
    stage: str,
    section: str,
    work: Callable[[Clip, S], ClipResult],
    job: Callable[[dict[str, Any], ShardRun, int], S],
    stage_report: Callable[[list[ClipResult], dict[str, Any]], dict[str, Any]],
    argv: list[str] | None,
) -> dict[str, Any]:
    """One shard of a per-clip stage from start to end: read the params section, prepare the shard
    (start_shard), map `work` over its clips with the state `job(params, run, workers)` builds, and
    write the shard's report. Returns the report."""
    params = load_params(section)
    run = start_shard(stage, params["out_dir"], params["report"], argv)
    logger = logging.getLogger(f"stages.{run.log_name}")
    workers = resolve_workers(params["workers"])
    logger.info("%d clips, %d workers", len(run.clips), workers)
    state = job(params, run, workers)
    results = run_clips(work, run.clips, workers, f"{stage.replace('_', '-')}@{run.shard}", state)
    report = stage_report(results, params)
    write_shard_report(run, report, results)
    logger.info("%s: %d ok, %d skipped (report %s)", section, report["ok"], report["skipped"], run.report)
    return report


def discard_on_failure(out: Path, make: Callable[[], ClipResult]) -> ClipResult:
    """`make()`'s result; when it raises, the clip's output goes too, so that nothing stale outlives
    a clip that can no longer be made."""
    try:
        return make()
    except Exception:
        out.unlink(missing_ok=True)
        raise
