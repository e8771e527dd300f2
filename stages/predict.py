"""predict: Big Five scores for any video, through the pipeline's own stage functions and the checkpoint's params.

    python -m stages.predict CLIP|DIR [CLIP|DIR ...] [--model PATH] [--out FILE] [--explain DIR] [--fast | --exact]

With `--exact`, each clip goes through extract-frames (`sample_frames`, then the JPEG or WebP
round trip of its storage), align-faces (`align_clip`) and compute-flow (`clip_flow`) with the
`frames`, `faces` and `flow` params stored in the checkpoint, then through the evaluation's own
batching (`ClipDataset`, `collate`), so a clip is preprocessed exactly as in training. `--fast`
(the default, `predict.fast`) trades that identity for speed (see FastConfig). Output: JSON (stdout or --out) or, when a folder is given or --out ends
in .csv, CSV; a failed clip is a row with its error, and the exit status is 1 if any clip failed.

Start-up (importing TensorFlow and torch, building MTCNN, loading the model) costs seconds once
per process: pass many clips or a folder to one command, or hold a `Predictor` in library code.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import psutil
from tqdm import tqdm

from model.atomic import atomic_path
from model.card import card_warning
from model.config import ConfigError, DataConfig, from_section, require
from stages import cli
from stages.common import SkipClip, load_params, setup_logging
from stages.preprocess.records import SKIP, FastConfig, Frames

# torch, OpenCV, PyAV, TensorFlow, matplotlib and the libraries on them (model/, stages/preprocess/,
# stages/report/) are imported by the Predictor once the arguments are read: --help never waits for
# them, and matplotlib is imported only for --explain.
if TYPE_CHECKING:
    from model.data import Batch
    from stages.preprocess.clip import ClipFeatures

log = logging.getLogger(__name__)

READS = (
    "video files, or folders of .mp4 files; the checkpoint (--model, default params predict.model) with "
    "the preprocessing params it stores; params `predict` (--params)"
)
WRITES = (
    "JSON (or CSV for a folder or a .csv --out) on stdout or to --out; with --explain, DIR/<clip>.png; "
    "reports/logs/predict.log"
)

STEPS = ("decode", "detect", "align", "flow", "forward")


@dataclass(frozen=True)
class PredictParams:
    """The `predict` params section (every key optional)."""

    model: str = "data/model/best.pt"
    fast: bool = True  # the streamed fast path unless --exact; False: the pipeline's exact path unless --fast
    device: str = "cpu"  # cpu | cuda | auto (torch); MTCNN runs on the faces section's device
    # torch and TensorFlow CPU threads; 0: their defaults. One clip's tensors are small, and spare
    # OpenMP threads spin on a busy machine: 1 is faster there, and leaves cores to the decoder.
    threads: int = 1
    fast_detections: int = FastConfig.detections
    fast_max_detections: int = FastConfig.max_detections
    fast_tolerance: float = FastConfig.tolerance
    fast_skip: str = FastConfig.skip
    fast_deblock: bool = FastConfig.deblock

    @classmethod
    def load(cls, path: str | Path = "params.yaml") -> PredictParams:
        """The section from `path` when it exists and has one, else the defaults."""
        try:
            section = load_params("predict", path)
        except (OSError, KeyError):
            return cls()
        return cls.from_section(section)

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> PredictParams:
        """The `predict` section, checked whole."""
        p = from_section(cls, section, "predict")
        require(p.fast_skip in SKIP, "predict.fast_skip", p.fast_skip, f"one of {sorted(SKIP)}")
        require(p.fast_detections >= 2, "predict.fast_detections", p.fast_detections, "a count >= 2")
        require(
            p.fast_max_detections >= p.fast_detections, "predict.fast_max_detections", p.fast_max_detections,
            "a count >= fast_detections",
        )  # fmt: skip
        require(p.fast_tolerance > 0, "predict.fast_tolerance", p.fast_tolerance, "face sides > 0")
        require(p.threads >= 0, "predict.threads", p.threads, "a count >= 0 (0: the libraries' defaults)")
        return p

    def fast_config(self) -> FastConfig:
        return FastConfig(
            detections=self.fast_detections,
            max_detections=self.fast_max_detections,
            tolerance=self.fast_tolerance,
            skip=self.fast_skip,
            deblock=self.fast_deblock,
        )


@dataclass
class ClipPrediction:
    """One clip's outcome: scores in [0, 1] by output name, or the error that stopped it."""

    clip: str
    path: str
    ok: bool
    scores: dict[str, float] = field(default_factory=dict)
    detection_rate: float | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    explain: str = ""

    def row(self, columns: Sequence[str]) -> dict[str, Any]:
        """A flat CSV row: clip, path, ok, each output (empty when failed), detection rate, seconds, error."""
        row: dict[str, Any] = {"clip": self.clip, "path": self.path, "ok": self.ok}
        row.update({c: "" if c not in self.scores else round(self.scores[c], 6) for c in columns})
        rate = "" if self.detection_rate is None else round(self.detection_rate, 4)
        row.update(
            detection_rate=rate, seconds=round(self.seconds, 3), error=self.error, explain=self.explain
        )
        return row


def model_batch(features: ClipFeatures, data_cfg: DataConfig, name: str = "clip") -> Batch:
    """The batch of one clip, built by the dataset's own functions (clip_arrays, make_sample, collate)."""
    from model.data import clip_arrays, collate, make_sample

    f = features.flow
    arrays = clip_arrays(
        features.faces, features.valid, f.flow, f.scale, f.valid, data_cfg.static_size, data_cfg.flow_size
    )
    unlabelled = np.full(len(data_cfg.label_columns), np.nan, np.float32)
    return collate([make_sample(arrays, data_cfg, False, unlabelled, name)], data_cfg)


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Paths as given; a directory becomes its .mp4 files (sorted, case-insensitive suffix), a link
    whose target is gone included, so that it is reported rather than silently dropped."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            listed = (p for p in item.iterdir() if p.suffix.lower() == ".mp4" and not p.name.startswith("."))
            out.extend(sorted(p for p in listed if p.is_file() or p.is_symlink()))
        else:
            out.append(item)
    return out


# ---------------------------------------------------------------- the predictor


class Predictor:
    """A loaded model with its clip preprocessing: build once, then predict any number of clips."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        fast: FastConfig | None = None,
        threads: int = 0,
        params_path: str | Path = "params.yaml",
        warm_up: bool = True,
    ) -> None:
        import torch

        from model.training import load_checkpoint, resolve_device
        from stages.preprocess.clip import ClipPreprocessor, Preprocess

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model, self.configs, state = load_checkpoint(checkpoint, self.device)
        self.card: dict[str, Any] = state.get("card") or {}
        self.data_source = str(self.card.get("data_source", "unknown"))
        self.warning = card_warning(self.card)  # what a user must hear before reading the scores
        self.columns = self.configs.model.label_columns
        pre = Preprocess.from_checkpoint(self.configs.preprocess, params_path)
        self.preprocessor = ClipPreprocessor(pre, threads)
        self.fast = fast  # None: the exact path
        if warm_up:
            self.warm_up()

    @property
    def detector(self) -> Any:
        return self.preprocessor.detector

    def warm_up(self) -> None:
        """Trace MTCNN's graphs and run the network once, so that the first clip costs what any clip does."""
        import torch

        self.preprocessor.warm_up()
        data = self.configs.data
        faces = torch.zeros(1, data.static_frames, 3, data.static_size, data.static_size, device=self.device)
        flow = torch.zeros(1, 8, 2, data.flow_size, data.flow_size, device=self.device)
        with torch.inference_mode():
            self.model(faces, flow, torch.ones(1, 8, dtype=torch.bool, device=self.device))

    def read(self, video: str | Path) -> Frames:
        return self.preprocessor.read(video)

    def features(
        self, video: str | Path, timings: dict[str, float] | None = None, frames: Future | None = None
    ) -> ClipFeatures:
        return self.preprocessor.features(video, self.fast, timings, frames)

    def predict(
        self, video: str | Path, explain_dir: str | Path | None = None, frames: Future | None = None
    ) -> ClipPrediction:
        """Scores for one video; a bad video gives ok=False and its error, never an exception.

        `frames`: a Future of `read(video)` already under way (see predict_many).
        """
        import torch

        video = Path(video)
        result = ClipPrediction(clip=video.stem, path=str(video), ok=False)
        start = time.perf_counter()
        try:
            features = self.features(video, result.timings, frames)
            result.detection_rate = features.detection_rate
            t0 = time.perf_counter()
            batch = model_batch(features, self.configs.data, video.stem).to(self.device)
            with torch.inference_mode():
                out = self.model(
                    batch.faces, batch.flow, batch.flow_mask, return_attention=explain_dir is not None
                )
            pred = out.pred[0].float().cpu().numpy()
            result.timings["forward"] = time.perf_counter() - t0
            if not np.all(np.isfinite(pred)):
                raise SkipClip("the model gave non-finite scores")
            result.scores = {c: float(v) for c, v in zip(self.columns, pred, strict=True)}
            result.ok = True
            if explain_dir is not None:
                result.explain = self._explain(features, out, Path(explain_dir) / f"{video.stem}.png")
        except SkipClip as exc:
            result.error = str(exc)
        except Exception as exc:  # one bad clip must never stop the others
            log.exception("%s failed", video)
            result.error = f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - start
        result.timings = {k: round(v, 4) for k, v in result.timings.items()}
        if not result.ok:
            log.warning("%s: %s", video, result.error)
        return result

    def predict_many(
        self, videos: Sequence[str | Path], explain_dir: str | Path | None = None, progress: bool = True
    ) -> list[ClipPrediction]:
        """predict() over the videos in order, with a progress bar.

        Exact path: the next video is decoded in a background thread while the current one is
        aligned and predicted (decoders, OpenCV, TensorFlow and torch release the GIL), so on two
        cores a folder costs about max(decode, the rest) per clip rather than their sum. The fast
        path overlaps the two within each clip instead.
        """
        bar = tqdm(videos, desc="predict", unit="clip", disable=not progress or len(videos) < 2)
        if self.fast is not None:  # each clip already decodes in the background while it is aligned
            return [self.predict(video, explain_dir) for video in bar]
        results = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
            pending = pool.submit(self.read, videos[0]) if videos else None
            for i, video in enumerate(bar):
                current = pending
                pending = pool.submit(self.read, videos[i + 1]) if i + 1 < len(videos) else None
                results.append(self.predict(video, explain_dir, current))
        return results

    def _explain(self, features: ClipFeatures, out: Any, path: Path) -> str:
        """Save the overlay PNG of one clip; returns its path, or an 'unavailable: ...' note."""
        from model.data import frame_indices
        from stages.report.attention_maps import face_attention, overlay_png

        if not out.attention or "static_to_dynamic" not in out.attention:
            return "unavailable: the model has no static-to-dynamic cross-attention"
        n_real = int(out.dynamic_mask[0].sum())
        maps = face_attention(
            out.attention["static_to_dynamic"][0], out.static_grid, out.dynamic_grid, n_real
        )
        idx = frame_indices(features.valid, self.configs.data.static_frames, random=False)
        with atomic_path(path) as tmp:
            tmp.write_bytes(overlay_png(features.faces[idx], maps))
        return str(path)


# ---------------------------------------------------------------- output and the command


def write_results(
    results: list[ClipPrediction], columns: Sequence[str], fmt: str, out: str | None, meta: dict[str, Any]
) -> None:
    """JSON (meta plus one record per clip) or CSV (one row per clip) to `out`, or stdout when None."""
    if fmt == "csv":  # every row says what the model was trained on
        buffer = io.StringIO()
        source = {"model_data_source": meta.get("model_data_source", "unknown")}
        rows = [r.row(columns) | source for r in results]
        header = list(ClipPrediction("", "", False).row(columns) | source)
        writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        text = (
            json.dumps({**meta, "clips": [asdict(r) for r in results]}, indent=2, ensure_ascii=False) + "\n"
        )
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")


def parse_args(argv: Sequence[str] | None, defaults: PredictParams) -> argparse.Namespace:
    parser = cli.parser("stages.predict", __doc__, READS, WRITES)
    parser.add_argument("clips", nargs="+", help="video files, or folders whose .mp4 files are all predicted")
    parser.add_argument("--model", default=defaults.model, help=f"checkpoint (default {defaults.model})")
    parser.add_argument("--out", help="write here instead of stdout; a .csv name selects CSV")
    parser.add_argument(
        "--format",
        choices=("auto", "json", "csv"),
        default="auto",
        help="auto: CSV for a folder or a .csv --out",
    )
    parser.add_argument(
        "--explain", metavar="DIR", help="save each clip's attention overlay as DIR/<clip>.png"
    )
    path = parser.add_mutually_exclusive_group()
    path.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="streamed preprocessing, faster, slightly different from training's"
        + (" (the default)" if defaults.fast else ""),
    )
    path.add_argument(
        "--exact",
        dest="fast",
        action="store_false",
        help="the pipeline's own preprocessing, identical to training's"
        + ("" if defaults.fast else " (the default)"),
    )
    parser.add_argument("--device", default=defaults.device, help="torch device: cpu, cuda or auto")
    parser.add_argument("--params", default="params.yaml", help="params file for the predict section")
    return parser.parse_args(argv)


def output_format(args: argparse.Namespace) -> str:
    if args.format != "auto":
        return args.format
    if (args.out and args.out.lower().endswith(".csv")) or any(Path(c).is_dir() for c in args.clips):
        return "csv"
    return "json"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 all predicted, 1 some clip failed, 2 no model)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--params", default="params.yaml")
    try:
        params = PredictParams.load(probe.parse_known_args(argv)[0].params)
    except ConfigError as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, params)
    logger = setup_logging("predict")
    videos = expand_inputs(args.clips)
    if not videos:
        logger.error("no clips: the folders given hold no .mp4 files")
        return 2
    if not Path(args.model).is_file():
        logger.error("no model at %s: train one (dvc repro train) or pass --model PATH", args.model)
        return 2
    fast = params.fast_config() if (params.fast if args.fast is None else args.fast) else None
    try:
        predictor = Predictor(args.model, args.device, fast, params.threads, args.params)
    except Exception as exc:  # noqa: BLE001 - an unreadable or incompatible checkpoint: say so, no traceback
        logger.error("cannot load the model %s: %s: %s", args.model, type(exc).__name__, exc)
        return 2
    if predictor.warning:
        print(f"predict: WARNING: {predictor.warning}", file=sys.stderr)
    # From the process's start: interpreter, imports (torch, TensorFlow), MTCNN and the model.
    startup_seconds = time.time() - psutil.Process().create_time()
    results = predictor.predict_many(videos, args.explain)
    failed = sum(not r.ok for r in results)
    meta = {
        "model": str(args.model),
        "model_data_source": predictor.data_source,
        "warning": predictor.warning,
        "fast": fast is not None,
        "outputs": list(predictor.columns),
        "startup_seconds": round(startup_seconds, 3),
        "failed": failed,
    }
    write_results(results, predictor.columns, output_format(args), args.out, meta)
    logger.info(
        "%d clips predicted, %d failed (start-up %.1f s)", len(results) - failed, failed, startup_seconds
    )
    if predictor.warning:  # again after the scores, where a reader of the terminal looks
        print(f"predict: WARNING: {predictor.warning}", file=sys.stderr)
    return 1 if failed else 0


def exit_now(status: int) -> NoReturn:
    """End the command once everything is written and flushed, without the interpreter's teardown of
    TensorFlow, torch and MTCNN: it writes nothing and takes seconds, longer than a clip."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
