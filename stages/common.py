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
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
LABEL_COLUMNS = (*TRAITS, "interview")
SPLITS = ("train", "val", "test")

RAW_DIR = Path("data/raw")
LABELS_CSV = RAW_DIR / "labels.csv"
REPORTS_DIR = Path("reports")

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def section_config(cls: type[T], section: dict[str, Any] | None, name: str, strict: bool = True) -> T:
    """The dataclass `cls` from a params section; each value takes the type of the field's default.

    strict: a key the class does not know is an error, so a typo never passes silently; otherwise
    such keys (workers, paths read elsewhere) are ignored.
    """
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    section = dict(section or {})
    unknown = sorted(set(section) - known)
    if unknown and strict:
        raise KeyError(f"{name}: unknown params {unknown}")
    defaults = cls()
    return cls(**{k: _like(getattr(defaults, k), v) for k, v in section.items() if k in known})


def _like(default: Any, value: Any) -> Any:
    return type(default)(value) if isinstance(default, bool | int | float | str) else value


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

TMP_MARK = ".partial"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


@dataclass(frozen=True)
class Clip:
    """One clip of the dataset: its official name (without .mp4) and split."""

    name: str
    split: str

    def path(self, root: str | Path, suffix: str = ".npz") -> Path:
        return Path(root) / self.split / f"{self.name}{suffix}"


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


def run_clips(
    work: Callable[[Clip], ClipResult],
    clips: Iterable[Clip],
    workers: int,
    desc: str,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> list[ClipResult]:
    """Map `work` over the clips with a process pool and a progress bar.

    `work` must be a module-level function; an exception in it skips that clip only.
    """
    clips = list(clips)
    results: list[ClipResult] = []
    if workers <= 1 or len(clips) <= 1:
        if initializer is not None:
            initializer(*initargs)
        for clip in tqdm(clips, desc=desc, unit="clip", mininterval=1.0):
            results.append(_guarded(work, clip))
        return results
    with ProcessPoolExecutor(max_workers=workers, initializer=initializer, initargs=initargs) as pool:
        futures = {pool.submit(_guarded, work, clip): clip for clip in clips}
        for future in tqdm(
            as_completed(futures), total=len(futures), desc=desc, unit="clip", mininterval=1.0
        ):
            results.append(future.result())
    order = {c.name: i for i, c in enumerate(clips)}
    results.sort(key=lambda r: order[r.clip])
    return results


def _guarded(work: Callable[[Clip], ClipResult], clip: Clip) -> ClipResult:
    try:
        return work(clip)
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
