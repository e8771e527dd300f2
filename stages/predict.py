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
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import torch
from tqdm import tqdm

from model.config import DataConfig
from model.data import Batch, ClipDataset, collate, frame_indices, load_clip_arrays
from model.training import load_checkpoint, resolve_device
from stages.align_faces import AlignConfig, FaceDetector, align_clip, detect_frames, make_detector
from stages.common import Clip, SkipClip, atomic_path, load_params, section_config, setup_logging
from stages.compute_flow import Flow, clip_flow, estimator_from
from stages.extract_frames import (
    Frames,
    check_counts,
    check_frames,
    decode_frames,
    encode_frames,
    sample_frames,
)
from stages.fast_align import StreamAligner
from stages.fast_decode import SampledStream, prefetch

log = logging.getLogger(__name__)

# Used only when a checkpoint predates storing the `frames` section and no params.yaml is at hand.
FRAMES_DEFAULTS: dict[str, Any] = {
    "fps": 5,
    "max_side": 640,
    "codec": "jpeg",
    "quality": 70,
    "min_frames": 8,
    "min_coverage": 0.9,
}
STEPS = ("decode", "detect", "align", "flow", "forward")
# --fast plans its detections on the clip length its container declares; without one, on this (FI V2 clips are ~15 s).
DEFAULT_SECONDS = 15.0


@dataclass(frozen=True)
class FastConfig:
    """What `--fast` changes from the pipeline's preprocessing, and nothing else.

    Frames are decoded with PyAV in a background thread, skipping frames per `skip`
    (stages/fast_decode.py: a sample may move by a frame with nonref, up to three with bidir) and,
    unless `deblock`, the deblocking filter, and are not round-tripped through the storage codec.
    They are aligned as they arrive (stages/fast_align.py, StreamAligner): MTCNN on `detections`
    evenly spaced frames, plus up to `max_detections` in all where the landmarks' Lucas-Kanade
    tracks between two sightings part by more than `tolerance` face sides. Flow and the network
    are unchanged.
    """

    detections: int = 8
    max_detections: int = 16
    tolerance: float = 0.1
    skip: str = "bidir"  # none | nonref | bidir
    deblock: bool = False


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
        return section_config(cls, section, "predict", strict=False)

    def fast_config(self) -> FastConfig:
        return FastConfig(
            detections=self.fast_detections,
            max_detections=self.fast_max_detections,
            tolerance=self.fast_tolerance,
            skip=self.fast_skip,
            deblock=self.fast_deblock,
        )


@dataclass
class Preprocess:
    """The params sections that shape a clip's inputs: those stored in the checkpoint."""

    frames: dict[str, Any]
    faces: dict[str, Any]
    flow: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, stored: dict[str, Any], params_path: str | Path = "params.yaml") -> Preprocess:
        """The checkpoint's sections; a missing `frames` section falls back to params.yaml, then to defaults."""
        missing = [k for k in ("faces", "flow") if not stored.get(k)]
        if missing:
            raise ValueError(
                f"checkpoint stores no {' and '.join(missing)} params: cannot preprocess like training"
            )
        frames = stored.get("frames")
        if not frames:
            try:
                frames = load_params("frames", params_path)
                log.warning("checkpoint has no frames params: using those of %s", params_path)
            except (OSError, KeyError):
                frames = FRAMES_DEFAULTS
                log.warning("checkpoint has no frames params and %s none: using the defaults", params_path)
        return cls(dict(frames), dict(stored["faces"]), dict(stored["flow"]))


@dataclass
class ClipFeatures:
    """What the network's inputs are made from: aligned faces, their validity and their flow."""

    faces: np.ndarray  # uint8 [T, S, S, 3]
    valid: np.ndarray  # bool [T]
    flow: Flow
    timestamps: np.ndarray  # float64 [T] seconds

    @property
    def detection_rate(self) -> float:
        return float(self.valid.mean()) if len(self.valid) else 0.0


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


class TimedDetector:
    """A FaceDetector that passes calls through and counts the images and seconds spent in them."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector
        self.seconds = 0.0
        self.images = 0

    def reset(self) -> None:
        self.seconds, self.images = 0.0, 0

    def detect_faces(self, image: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        self.images += len(image) if isinstance(image, list) else 1
        try:
            return self.detector.detect_faces(image, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


# ---------------------------------------------------------------- pure functions on one clip


def read_frames(video: str | Path, frames_params: dict[str, Any]) -> Frames:
    """Frames (RGB [T, H, W, 3] and timestamps) as align-faces would read them from extract-frames'
    output: sample_frames, the clip checks, then the storage codec's encode-decode round trip.
    (The fast path streams its frames instead: Predictor._fast_track.)
    """
    p = frames_params
    frames = sample_frames(video, p["fps"], p["max_side"])
    check_frames(frames, p["min_frames"], p["min_coverage"])
    frames.frames = decode_frames(*encode_frames(frames.frames, p["codec"], p["quality"]))
    return frames


def check_flow_input(valid: np.ndarray, min_frames: int) -> None:
    """compute-flow's checks on an aligned clip: long enough, and two consecutive valid faces."""
    if len(valid) < max(2, min_frames):
        raise SkipClip(f"too short: {len(valid)} faces, fewer than {max(2, min_frames)}")
    if not np.any(valid[:-1] & valid[1:]):
        raise SkipClip("no two consecutive valid faces")


def model_batch(features: ClipFeatures, data_cfg: DataConfig, name: str = "clip") -> Batch:
    """The evaluation's batch of one clip: load_clip_arrays on the would-be npz files, ClipDataset, collate."""
    faces_npz, flow_npz = io.BytesIO(), io.BytesIO()
    np.savez(faces_npz, faces=features.faces, valid=features.valid)
    f = features.flow
    np.savez(flow_npz, flow=f.flow, scale=np.float32(f.scale), valid=f.valid)
    faces_npz.seek(0)
    flow_npz.seek(0)
    arrays = load_clip_arrays(faces_npz, flow_npz, data_cfg.static_size, data_cfg.flow_size)
    dataset = ClipDataset(Path(), Path(), [Clip(name, "predict")], None, data_cfg, train=False)
    dataset.cache[name] = arrays
    return collate([dataset[0]])


def attention_maps(
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


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Paths as given; a directory becomes its .mp4 files (sorted, case-insensitive suffix)."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            out.extend(sorted(p for p in item.iterdir() if p.suffix.lower() == ".mp4" and p.is_file()))
        else:
            out.append(item)
    return out


# ---------------------------------------------------------------- the predictor


class Predictor:
    """A loaded model with its detector and flow estimator: build once, then predict any number of clips."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        fast: FastConfig | None = None,
        threads: int = 0,
        params_path: str | Path = "params.yaml",
        warm_up: bool = True,
    ) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.model, self.configs, _ = load_checkpoint(checkpoint, self.device)
        self.columns = self.configs.model.label_columns
        self.pre = Preprocess.from_checkpoint(self.configs.preprocess, params_path)
        self.align_cfg = AlignConfig.from_params(self.pre.faces)
        self.detector = TimedDetector(make_detector(self.pre.faces.get("device", "CPU:0"), threads))
        self.estimator = estimator_from(self.pre.flow)
        self.fast = fast
        if warm_up:
            self.warm_up()

    def warm_up(self) -> None:
        """Trace MTCNN's graphs and run the network once, so that the first clip costs what any clip does.

        MTCNN's networks are traced per input shape until TensorFlow relaxes the shapes (after a
        few different ones): three detections of the astronaut's face on frames of two sizes, one
        with two images. Costs about a second once, in the start-up.
        """
        from skimage.data import astronaut

        face = astronaut()[:256, 96:352]
        calls = [((640, 360), 0.6, 1), ((480, 480), 0.9, 1), ((640, 360), 0.5, 2)]
        for (width, height), scale, images in calls:
            canvas = np.full((images, height, width, 3), 96, np.uint8)
            small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            canvas[:, : small.shape[0], : small.shape[1]] = small[:height, :width]
            detect_frames(canvas, np.arange(images), self.detector.detector, self.align_cfg)
        data = self.configs.data
        faces = torch.zeros(1, data.static_frames, 3, data.static_size, data.static_size, device=self.device)
        flow = torch.zeros(1, 8, 2, data.flow_size, data.flow_size, device=self.device)
        with torch.inference_mode():
            self.model(faces, flow, torch.ones(1, 8, dtype=torch.bool, device=self.device))

    def read(self, video: str | Path) -> Frames:
        """The frames of one video as the exact path reads them (see read_frames)."""
        return read_frames(video, self.pre.frames)

    def features(
        self, video: str | Path, timings: dict[str, float] | None = None, frames: Future | None = None
    ) -> ClipFeatures:
        """Frames, aligned faces and flow of one video; raises SkipClip for an unusable one.

        `frames` may be a Future of `read(video)` started earlier (exact path only); then "decode"
        times only the wait. The fast path streams instead: see `_fast_track`.
        """
        timings = {} if timings is None else timings
        self.detector.reset()
        if self.fast is None:
            start = time.perf_counter()
            frames = self.read(video) if frames is None else frames.result()
            timings["decode"] = time.perf_counter() - start
            start = time.perf_counter()
            track = align_clip(frames.frames, self.detector, self.align_cfg)
            timestamps = frames.timestamps
            timings["align"] = time.perf_counter() - start - self.detector.seconds
        else:
            track, timestamps = self._fast_track(video, timings)
        timings["detect"] = self.detector.seconds
        start = time.perf_counter()
        check_flow_input(track.valid, self.pre.flow.get("min_frames", 2))
        flow = clip_flow(
            track.faces, self.estimator, self.pre.flow["size"], self.pre.flow["bound"], track.valid
        )
        timings["flow"] = time.perf_counter() - start
        return ClipFeatures(track.faces, track.valid, flow, timestamps)

    def _fast_track(self, video: str | Path, timings: dict[str, float]) -> tuple[Any, np.ndarray]:
        """The fast path's aligned track and timestamps: a background thread decodes while this one
        aligns each frame as it comes (StreamAligner), so on two cores the clip costs about its
        decoding plus the last gap, not decoding plus alignment.

        timings: "decode" is the decoder thread's busy time, which overlaps "align" (this thread's
        alignment work, without MTCNN's "detect").
        """
        p, f = self.pre.frames, self.fast
        stream = SampledStream(video, p["fps"], p["max_side"], skip=f.skip, deblock=f.deblock)
        expected = stream.expected or round(DEFAULT_SECONDS * p["fps"])
        aligner = StreamAligner(
            self.detector, self.align_cfg, expected, f.detections, f.max_detections, f.tolerance
        )
        work = 0.0
        for image, _ in prefetch(stream):
            start = time.perf_counter()
            aligner.add(image)
            work += time.perf_counter() - start
        timings["decode"] = stream.seconds
        stream.check(p["min_coverage"])
        check_counts(len(stream.timestamps), stream.decoded, 0, p["min_frames"], 0.0)
        start = time.perf_counter()
        track = aligner.finish()
        work += time.perf_counter() - start
        timings["align"] = work - self.detector.seconds
        return track, np.asarray(stream.timestamps, np.float64)

    def predict(
        self, video: str | Path, explain_dir: str | Path | None = None, frames: Future | None = None
    ) -> ClipPrediction:
        """Scores for one video; a bad video gives ok=False and its error, never an exception.

        `frames`: a Future of `read(video)` already under way (see predict_many).
        """
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
        if not out.attention or "static_to_dynamic" not in out.attention:
            return "unavailable: the model has no static-to-dynamic cross-attention"
        n_real = int(out.dynamic_mask[0].sum())
        maps = attention_maps(
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
    if fmt == "csv":
        buffer = io.StringIO()
        rows = [r.row(columns) for r in results]
        header = list(ClipPrediction("", "", False).row(columns))
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
    parser = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__.split("\n")[0])
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
    params = PredictParams.load(probe.parse_known_args(argv)[0].params)
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
    # From the process's start: interpreter, imports (torch, TensorFlow), MTCNN and the model.
    startup_seconds = time.time() - psutil.Process().create_time()
    results = predictor.predict_many(videos, args.explain)
    failed = sum(not r.ok for r in results)
    meta = {
        "model": str(args.model),
        "fast": fast is not None,
        "outputs": list(predictor.columns),
        "startup_seconds": round(startup_seconds, 3),
        "failed": failed,
    }
    write_results(results, predictor.columns, output_format(args), args.out, meta)
    logger.info(
        "%d clips predicted, %d failed (start-up %.1f s)", len(results) - failed, failed, startup_seconds
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
