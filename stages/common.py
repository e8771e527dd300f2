"""Plumbing shared by the stages: params, logging, atomic writes, the clip index, per-clip runs.

The per-clip stages (extract-frames, align-faces, compute-flow) follow one pattern: map a pure
function over the clips with a process pool, write each clip's output atomically with a key
that says which params and which input made it, skip clips whose output already carries the
right key (so an interrupted run resumes), and count every skipped clip with its reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import yaml
from tqdm import tqdm

from model.atomic import TMP_MARK, atomic_path, is_temporary
from model.params import ConfigError, flatten, from_section
from model.records import SPLITS, Clip, ClipSource

if TYPE_CHECKING:
    import pandas as pd

RAW_DIR = Path("data/raw")
LABELS_CSV = RAW_DIR / "labels.csv"
REPORTS_DIR = Path("reports")

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")
P = TypeVar("P")


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
    """Delete the temporary files (atomic_path's) that an interrupted run left under `root`, and
    nothing else; returns how many."""
    removed = 0
    for tmp in Path(root).rglob(f"*{TMP_MARK}*"):
        if tmp.is_file() and is_temporary(tmp):
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


# Cells that read as missing in the numeric columns of a table; never in a name column.
NA_WORDS = ("", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "null", "NULL", "None")
NAME_COLUMNS = ("clip", "split", "video_sha256", "youtube_id")


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV of clips (labels, factors, predictions, shard lists): the name columns stay strings as
    written, even a clip named `NA`, `null` or `007`; the other columns read missing cells as NaN."""
    import pandas as pd  # here, not at the top: a command's --help never waits for it

    columns = pd.read_csv(path, nrows=0).columns
    names = [c for c in columns if c in NAME_COLUMNS]
    return pd.read_csv(
        path,
        dtype=dict.fromkeys(names, str),
        keep_default_na=False,
        na_values={c: list(NA_WORDS) for c in columns if c not in names},
    )


def read_labels(path: str | Path = LABELS_CSV) -> pd.DataFrame:
    """labels.csv (or any clip table) as a frame, by read_table."""
    return read_table(path)


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
    unexpected: bool = (
        False  # skipped by an error other than SkipClip: the code's or the setup's, not the clip's
    )


class _Worker:
    """The state of the running process's clips: what run_clips hands every call of `work`.

    One slot per process, filled by the pool's initializer (or directly when run serially), so a
    worker builds its expensive objects (a face detector, a flow estimator) once, not per clip.
    `marks` is a folder where a pool worker notes the clip it is working on (a file named by its
    process id), so that when the kernel kills a worker the clip that cost it its life is known.
    """

    state: Any = None
    marks: Path | None = None

    @classmethod
    def set(cls, state: Any, marks: Path | None = None) -> None:
        cls.state, cls.marks = state, marks


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
    own copy, which may build what it needs lazily. An exception in `work` skips that clip only; so
    does a worker that dies (killed by the kernel for memory, say): its clip is reported, a new pool
    takes the clips that were waiting, and the run goes on.
    """
    clips = list(clips)
    results: list[ClipResult] = []
    if workers <= 1 or len(clips) <= 1:
        _Worker.set(state)
        for clip in tqdm(clips, desc=desc, unit="clip", mininterval=1.0):
            results.append(_guarded(work, clip))
        return results
    pending = clips
    with (
        tqdm(total=len(clips), desc=desc, unit="clip", mininterval=1.0) as bar,
        tempfile.TemporaryDirectory() as marks,
    ):
        while pending:
            done, pending = _run_pool(work, pending, workers, state, Path(marks), bar)
            results += done
    order = {c.name: i for i, c in enumerate(clips)}
    results.sort(key=lambda r: order[r.clip])
    return results


def _run_pool(
    work: Callable[[Clip, S], ClipResult], clips: list[Clip], workers: int, state: S, marks: Path, bar: tqdm
) -> tuple[list[ClipResult], list[Clip]]:
    """The clips' results until the pool breaks, if it does: then also the results of the clips whose
    worker died, and the clips still to run."""
    results: list[ClipResult] = []
    unfinished: list[Clip] = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_Worker.set, initargs=(state, marks)) as pool:
        futures = {pool.submit(_guarded, work, clip): clip for clip in clips}
        for future in as_completed(futures):
            try:
                results.append(future.result())
                bar.update()
            except BrokenProcessPool:
                unfinished.append(futures[future])
    if not unfinished:
        return results, []
    # The pool ends every worker when one dies: the clips they were on are suspects, each retried
    # alone, so that only the clip whose worker dies again is charged with it.
    suspects = []
    for mark in sorted(marks.iterdir()):
        name, split = mark.read_text(encoding="utf-8").split("\t", 1)
        suspects.append(Clip(name, split))
        mark.unlink()
    suspects = [c for c in unfinished if c in set(suspects)] or unfinished[:1]
    for clip in suspects:
        results.append(_run_alone(work, clip, state, marks))
        bar.update()
    return results, [c for c in unfinished if c not in set(suspects)]


def _run_alone(work: Callable[[Clip, S], ClipResult], clip: Clip, state: S, marks: Path) -> ClipResult:
    """One clip in a pool of its own; a worker that dies there died of this clip."""
    with ProcessPoolExecutor(max_workers=1, initializer=_Worker.set, initargs=(state, marks)) as pool:
        try:
            return pool.submit(_guarded, work, clip).result()
        except BrokenProcessPool:
            pass
    for mark in marks.iterdir():
        mark.unlink()
    reason = "worker died on this clip (killed by the kernel for memory?)"
    logging.getLogger(__name__).warning("skipped %s/%s: %s", clip.split, clip.name, reason)
    return ClipResult(clip.name, clip.split, "skipped", reason, unexpected=True)


def _guarded(work: Callable[[Clip, Any], ClipResult], clip: Clip) -> ClipResult:
    mark = None if _Worker.marks is None else _Worker.marks / str(os.getpid())
    if mark is not None:
        mark.write_text(f"{clip.name}\t{clip.split}", encoding="utf-8")
    try:
        return _attempt(work, clip)
    finally:
        if mark is not None:
            mark.unlink(missing_ok=True)


def _attempt(work: Callable[[Clip, Any], ClipResult], clip: Clip) -> ClipResult:
    try:
        return work(clip, _Worker.state)
    except SkipClip as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad clip must never end the run
        reason = f"{type(exc).__name__}: {exc}"
        logging.getLogger(__name__).warning("skipped %s/%s: %s", clip.split, clip.name, reason)
        return ClipResult(clip.name, clip.split, "skipped", reason, unexpected=True)
    logging.getLogger(__name__).warning("skipped %s/%s: %s", clip.split, clip.name, reason)
    return ClipResult(clip.name, clip.split, "skipped", reason)


def common_failure(results: list[ClipResult]) -> str | None:
    """The error when every clip (two or more) failed with the same unexpected error: a broken setup
    rather than bad clips, which should stop the stage instead of skipping them all."""
    reasons = {r.reason for r in results if r.unexpected}
    if len(results) >= 2 and all(r.unexpected for r in results) and len(reasons) == 1:
        return reasons.pop()
    return None


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


def is_stage_output(path: str | Path) -> bool:
    """Whether `path` is a per-clip output a stage wrote (an npz that carries its key): the only
    files cleanup may remove besides temporary ones."""
    path = Path(path)
    return path.suffix == ".npz" and path.is_file() and stored_key(path) is not None


def prune_outputs(root: str | Path, keep: Iterable[Path]) -> int:
    """Remove per-clip outputs of clips no longer in the index (persisted outs outlive them); files
    the stage did not write stay."""
    keep = {Path(p).resolve() for p in keep}
    removed = 0
    for path in Path(root).rglob("*.npz"):
        if path.resolve() not in keep and is_stage_output(path):
            path.unlink()
            removed += 1
    return removed


def result_dict(r: ClipResult) -> dict[str, Any]:
    return asdict(r)


# ---------------------------------------------------------------- shards
# A per-clip stage runs as N shards (dvc.yaml's matrix over shards.ids): shard k reads the clip list
# <shards.dir>/<k>.csv and writes under <out_dir>/<k>/<split>/<clip>.npz; readers find a clip's file
# in whichever shard holds it with clip_file().


SHARD_LIST_COLUMNS = ("clip", "split", "video_sha256")  # data/shards/<k>.csv


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
            raise ConfigError(f"shards.ids: {ids!r} is not allowed; expected a list [0, ..., N-1]")
        ids = tuple(int(i) for i in ids)
        if ids != tuple(range(len(ids))) or not ids:
            raise ConfigError(f"shards.ids: {list(ids)} is not allowed; expected 0..N-1 in order")
        shards = from_section(cls, {"ids": ids, **section}, "shards")
        if shards.workers < 0:
            raise ConfigError(f"shards.workers: {shards.workers!r} is not allowed; expected a count >= 0")
        return shards


def shard_root(root: str | Path, shard: int) -> Path:
    """A shard's own output folder under a stage's root."""
    return Path(root) / str(shard)


def shard_report(report: str | Path, shard: int) -> Path:
    """A shard's report beside the stage's merged one: reports/data/frames.json -> reports/data/frames/<k>.json."""
    return Path(report).with_suffix("") / f"{shard}.json"


def check_shard(stage: str, shard: int, shards: Shards) -> int:
    """A per-clip stage's --shard K (stages.cli.shard_parser), checked against shards.ids."""
    if shard not in shards.ids:
        raise SystemExit(f"{stage}: --shard {shard} is not one of shards.ids {list(shards.ids)}")
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
    """Remove what no current shard owns under a stage root: the outputs and reports of shards
    k >= N left by a run with more shards, and the outputs of the unsharded layout's split folders.
    Only files a stage wrote go (per-clip outputs, shard reports, temporary files), then the folders
    they leave empty; anything else stays where it is. Returns how many files went."""
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    for path in sorted(root.iterdir()):
        stem = path.name.split(".")[0]
        if not ((stem.isdigit() and int(stem) >= shards) or (path.is_dir() and path.name in SPLITS)):
            continue
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if is_stage_output(file) or is_temporary(file) or _is_shard_report(file) or _is_shard_list(file):
                file.unlink()
                removed += 1
        if path.is_dir():
            for folder in [*sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True), path]:
                if not any(folder.iterdir()):
                    folder.rmdir()
    return removed


def _is_shard_list(path: Path) -> bool:
    """A shard's clip list (stages.shards' CSV)."""
    if path.suffix != ".csv" or not path.stem.isdigit():
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().strip() == ",".join(SHARD_LIST_COLUMNS)


def _is_shard_report(path: Path) -> bool:
    """A shard's report (write_shard_report's JSON) under a stage's report folder."""
    if path.suffix != ".json" or not path.stem.isdigit():
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"shard", "results"} <= set(report)


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


def start_shard(stage: str, out_dir: str | Path, report: str | Path, shard: int) -> ShardRun:
    """Check the shard, set up logging (reports/logs/<stage>.log, or <stage>-<k>.log with several
    shards), clear what no shard owns, and list this shard's clips after prepare_outputs."""
    shards = Shards.from_params(load_params().get("shards"))
    shard = check_shard(stage, shard, shards)
    log_name = stage if shards.count == 1 else f"{stage}-{shard}"
    logger = setup_logging(log_name)
    reports = Path(report).with_suffix("")  # the shard reports' folder
    stale = remove_stale_shards(out_dir, shards.count) + remove_stale_shards(reports, shards.count)
    stale += remove_partials(reports) if reports.is_dir() else 0  # a report a killed run was writing
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


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_out_dir(section: str, params: dict[str, Any]) -> None:
    """Refuse an output folder that is, contains or lies inside one of the stage's inputs or another
    stage's output: cleanup in it must never reach files that are not the stage's own.

    Inputs are the section's other `*_dir` keys; outputs are every other section's `out_dir`, the raw
    data and the shard lists. A folder that another stage reads (its `*_dir`) may be this output
    itself, but may not contain it or lie inside it.
    """
    out = Path(params[section]["out_dir"]).resolve()
    if out == Path.cwd().resolve() or Path.cwd().resolve().is_relative_to(out):
        raise ConfigError(f"{section}.out_dir: {params[section]['out_dir']!r} holds the whole project")
    strict: list[tuple[str, Any]] = [
        (f"{section}.{k}", v) for k, v in params[section].items() if k.endswith("_dir") and k != "out_dir"
    ]
    loose: list[tuple[str, Any]] = []
    for name, other in params.items():
        if name == section or not isinstance(other, dict):
            continue
        for key, value in flatten(other).items():
            if key.endswith("out_dir") or (name, key) in (("data", "raw_dir"), ("shards", "dir")):
                strict.append((f"{name}.{key}", value))
            elif key.endswith("_dir") or key == "dir":
                loose.append((f"{name}.{key}", value))
    for key, value in strict + loose:
        if not isinstance(value, str) or not value:
            continue
        other = Path(value).resolve()
        if _overlaps(out, other) and not ((key, value) in loose and out == other):
            raise ConfigError(
                f"{section}.out_dir: {params[section]['out_dir']!r} overlaps {key} ({value!r}); an output "
                "folder may not be, contain or lie inside an input or another stage's output"
            )


def run_shard_stage(
    stage: str,
    section: str,
    parse: Callable[[dict[str, Any]], P],
    work: Callable[[Clip, S], ClipResult],
    job: Callable[[P, ShardRun, int], S],
    stage_report: Callable[[list[ClipResult], dict[str, Any]], dict[str, Any]],
    shard: int,
) -> dict[str, Any]:
    """Shard `shard` of a per-clip stage from start to end: check the whole params section with `parse`
    (a wrong value stops the stage here, before any file is touched), prepare the shard
    (start_shard), map `work` over its clips with the state `job(params, run, workers)` builds, and
    write the shard's report. Returns the report."""
    params = load_params()
    section_params = params[section]
    try:
        parsed = parse(section_params)
        check_out_dir(section, params)
    except ConfigError as exc:
        raise SystemExit(f"{stage}: {exc}") from None
    run = start_shard(stage, section_params["out_dir"], section_params["report"], shard)
    logger = logging.getLogger(f"stages.{run.log_name}")
    workers = resolve_workers(section_params.get("workers", 0))
    logger.info("%d clips, %d workers", len(run.clips), workers)
    state = job(parsed, run, workers)
    results = run_clips(work, run.clips, workers, f"{stage.replace('_', '-')}@{run.shard}", state)
    report = stage_report(results, section_params)
    write_shard_report(run, report, results)
    logger.info("%s: %d ok, %d skipped (report %s)", section, report["ok"], report["skipped"], run.report)
    if (error := common_failure(results)) is not None:
        raise SystemExit(f"{stage}: every clip failed with the same error, so the stage stops: {error}")
    return report


def discard_on_failure(out: Path, make: Callable[[], ClipResult]) -> ClipResult:
    """`make()`'s result; when it raises, the clip's output goes too, so that nothing stale outlives
    a clip that can no longer be made."""
    try:
        return make()
    except Exception:
        out.unlink(missing_ok=True)
        raise
