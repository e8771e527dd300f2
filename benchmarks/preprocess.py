"""Seconds per clip of extract-frames, align-faces and compute-flow on one real clip, against a naive way.

Ours: the pipeline's own functions and params (grab-only skipping, MTCNN as TensorFlow graphs on
downscaled batches of every k-th frame). Naive: cv2 read() and colour conversion of every frame,
MTCNN as the mtcnn package ships it (eager) at full resolution on every sampled frame one at a time. One-time costs (TensorFlow import, detector
construction, first-call tracing) are timed apart from the per-clip figures.

    python -m benchmarks.preprocess [--video PATH] [--params params.yaml] [--repeat 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stages.common import load_params, write_json
from stages.preprocess import faces as af
from stages.preprocess.flow import clip_flow, estimator_from
from stages.preprocess.template import LANDMARK_NAMES
from stages.preprocess.video import sample_frames

REAL_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "_G3kw9HwCqY.000.mp4"
TARGET_SECONDS = 3.0
TARGET_SPEEDUP = 8.0

log = logging.getLogger(__name__)


STEPS = ("extract", "align", "flow")


@dataclass
class Timing:
    """Seconds per clip of each step for one approach: wall clock, and CPU time of this process (all
    its threads), which other jobs on a shared machine inflate less than the wall clock."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def total(self, kind: str = "wall") -> float:
        return sum(getattr(self, kind).values())

    def measure(self, step: str, fn: Callable[[], Any]) -> Any:
        """Run fn, record its seconds under `step`, return its result."""
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.wall[step] = time.perf_counter() - wall
        self.cpu[step] = time.process_time() - cpu
        return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def naive_frames(video: Path, fps: float) -> np.ndarray:
    """Read and convert every frame with cv2 read(), keeping the one nearest each 1/fps tick."""
    cap = cv2.VideoCapture(str(video))
    source_fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    cap.release()
    picks = np.unique(np.round(np.arange(0, len(frames) / source_fps, 1 / fps) * source_fps).astype(int))
    return np.stack([frames[i] for i in picks if i < len(frames)])


def naive_align(frames: np.ndarray, detector: af.FaceDetector, cfg: af.AlignConfig) -> np.ndarray:
    """MTCNN at full resolution on every frame, one by one; the largest face aligned onto the template."""
    target = af.template(cfg.size, cfg.margin)
    faces = np.zeros((len(frames), cfg.size, cfg.size, 3), np.uint8)
    for i, frame in enumerate(frames):
        found = detector.detect_faces(
            frame,
            min_face_size=cfg.min_face_size,
            threshold_pnet=cfg.threshold_pnet,
            threshold_rnet=cfg.threshold_rnet,
            threshold_onet=cfg.threshold_onet,
        )
        if found:
            face = max(found, key=lambda f: f["box"][2] * f["box"][3])
            points = np.array([face["keypoints"][k] for k in LANDMARK_NAMES], np.float64)
            faces[i] = af.warp_face(frame, af.similarity_matrix(points, target), cfg.size)
    return faces


def run_ours(video: Path, params: dict[str, Any], detector: af.FaceDetector) -> tuple[Timing, dict[str, Any]]:
    cfg = af.AlignConfig.from_params(params["faces"])
    flow_params = params["flow"]
    estimate = estimator_from(flow_params)
    timing = Timing()
    frames = timing.measure(
        "extract", lambda: sample_frames(video, params["frames"]["fps"], params["frames"]["max_side"])
    )
    track = timing.measure("align", lambda: af.align_clip(frames.frames, detector, cfg))
    timing.measure(
        "flow",
        lambda: clip_flow(track.faces, estimate, flow_params["size"], flow_params["bound"], track.valid),
    )
    facts = {
        "frames": len(frames.frames),
        "frame_size": list(frames.frames.shape[1:3]),
        "valid": track.valid_ratio,
    }
    return timing, facts


def run_naive(video: Path, params: dict[str, Any], detector: af.FaceDetector) -> Timing:
    cfg = af.AlignConfig.from_params(params["faces"])
    flow_params = params["flow"]
    estimate = estimator_from(flow_params)
    timing = Timing()
    frames = timing.measure("extract", lambda: naive_frames(video, params["frames"]["fps"]))
    faces = timing.measure("align", lambda: naive_align(frames, detector, cfg))
    timing.measure("flow", lambda: clip_flow(faces, estimate, flow_params["size"], flow_params["bound"]))
    return timing


def median_timing(runs: list[Timing]) -> Timing:
    return Timing(
        {k: statistics.median(r.wall[k] for r in runs) for k in STEPS},
        {k: statistics.median(r.cpu[k] for r in runs) for k in STEPS},
    )


def one_time_costs(
    video: Path, params: dict[str, Any]
) -> tuple[af.FaceDetector, af.FaceDetector, dict[str, float]]:
    """Import TensorFlow, build our detector and the naive (eager) one, and run each once at both
    the detection and the full size (tracing ours)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _, tf_import = timed(lambda: __import__("tensorflow"))
    device = params["faces"].get("device", "CPU:0")
    detector, build = timed(lambda: af.make_detector(device))
    eager = af.make_detector(device, compiled=False)
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    cap.release()
    if not ok:
        raise SystemExit(f"cannot read {video}")
    first = cv2.cvtColor(first, cv2.COLOR_BGR2RGB)
    cfg = af.AlignConfig.from_params(params["faces"])

    def trace() -> None:
        af.align_clip(np.repeat(first[None], 2, axis=0), detector, cfg)
        detector.detect_faces(first)

    _, warmup = timed(trace)
    eager.detect_faces(first)
    return (
        detector,
        eager,
        {"tensorflow_import": tf_import, "detector_build": build, "first_call_tracing": warmup},
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=REAL_CLIP)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--repeat", type=int, default=2, help="runs of each approach; the median counts")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.video.is_file():
        raise SystemExit(f"no video at {args.video}: the benchmark reads the real sample in ../shared/data")
    params = load_params(path=args.params)

    detector, eager, once = one_time_costs(args.video, params)
    ours_runs, naive_runs = [], []
    facts: dict[str, Any] = {}
    for i in range(args.repeat):
        timing, facts = run_ours(args.video, params, detector)
        ours_runs.append(timing)
        naive_runs.append(run_naive(args.video, params, eager))
        log.info("run %d: ours %.2f s, naive %.2f s", i + 1, ours_runs[-1].total(), naive_runs[-1].total())
    ours, naive = median_timing(ours_runs), median_timing(naive_runs)

    print(f"clip {args.video.name}: {facts['frames']} frames at {params['frames']['fps']} fps, "
          f"kept at {facts['frame_size'][1]}x{facts['frame_size'][0]}, face in {facts['valid']:.0%}")  # fmt: skip
    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    print("one-time: " + ", ".join(f"{k} {v:.2f} s" for k, v in once.items()))
    for kind in ("wall", "cpu"):
        print(f"{'step':<10}{'ours ' + kind:>12}{'naive ' + kind:>12}{'naive/ours':>12}")
        for step in (*STEPS, "total"):
            mine = ours.total(kind) if step == "total" else getattr(ours, kind)[step]
            theirs = naive.total(kind) if step == "total" else getattr(naive, kind)[step]
            print(f"{step:<10}{mine:>12.2f}{theirs:>12.2f}{theirs / mine:>11.1f}x")
    speedup = naive.total() / ours.total()
    print(f"target (wall): <= {TARGET_SECONDS:.0f} s per clip: {'met' if ours.total() <= TARGET_SECONDS else 'MISSED'}; "
          f">= {TARGET_SPEEDUP:.0f}x naive: {'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}")  # fmt: skip
    result = {
        "video": args.video.name,
        **facts,
        "repeat": args.repeat,
        "cores": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "one_time_s": once,
        "ours_s": {kind: {**getattr(ours, kind), "total": ours.total(kind)} for kind in ("wall", "cpu")},
        "naive_s": {kind: {**getattr(naive, kind), "total": naive.total(kind)} for kind in ("wall", "cpu")},
        "speedup": speedup,
    }
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
