"""Seconds per step of `predict` on one real clip, fast against exact, warm and cold.

Warm: one process holds the model and MTCNN (a Predictor); after a warm-up clip, each path is
timed `--repeat` times: decode, detect (inside MTCNN), align (the rest of alignment: resizing,
tracking, warping), flow and forward (batching and the network), wall and CPU seconds. Exact is
the straightforward path, every stage function at the checkpoint's params as the pipeline runs
them; fast is `predict --fast`. Their scores are compared too. Cold: `python -m stages.predict`
in a fresh process, from its start to the first prediction written, and to its exit.

    python -m benchmarks.predict [--video PATH] [--model PATH] [--repeat 3] [--out FILE]

Without a checkpoint at --model, an untrained network of the default config is saved to a
temporary file (fine for timings; its scores mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import DataConfig, ModelConfig, TrainConfig
from model.network import build_model
from model.training import RunConfigs, save_checkpoint
from stages.common import load_params, write_json
from stages.predict import STEPS, Predictor, PredictParams, expand_inputs

REPO = Path(__file__).resolve().parents[1]
REAL_CLIP = REPO.parent / "shared" / "data" / "videos" / "_G3kw9HwCqY.000.mp4"
TARGET_SECONDS = 1.0

log = logging.getLogger(__name__)


def untrained_checkpoint(path: Path, params: dict[str, Any]) -> Path:
    """A checkpoint of the params' default network with random weights and the params' preprocessing."""
    torch.manual_seed(0)
    configs = RunConfigs(
        model=ModelConfig.from_params(params["model"]),
        data=DataConfig.from_params(params),
        train=TrainConfig.from_params(params["train"]),
        preprocess={k: params[k] for k in ("frames", "faces", "flow")},
    )
    save_checkpoint(path, build_model(configs.model), configs)
    return path


def time_path(predictor: Predictor, video: Path, repeat: int) -> dict[str, Any]:
    """Median wall seconds per step and in total, CPU seconds, detections and the last scores."""
    runs = []
    for _ in range(repeat):
        cpu = time.process_time()
        result = predictor.predict(video)
        if not result.ok:
            raise RuntimeError(f"{video}: {result.error}")
        runs.append((result, time.process_time() - cpu, predictor.detector.images))
    median = {step: statistics.median(r.timings[step] for r, _, _ in runs) for step in STEPS}
    return {
        "steps": median,
        "total": statistics.median(r.seconds for r, _, _ in runs),
        "cpu": statistics.median(c for _, c, _ in runs),
        "detected_frames": runs[-1][2],
        "detection_rate": runs[-1][0].detection_rate,
        "scores": runs[-1][0].scores,
    }


def throughput(predictor: Predictor, video: Path, clips: int) -> dict[str, float]:
    """Wall and CPU seconds per clip when `clips` copies go through one predict_many (decoding prefetched)."""
    cpu, start = time.process_time(), time.perf_counter()
    results = predictor.predict_many([video] * clips, progress=False)
    if not all(r.ok for r in results):
        raise RuntimeError(f"{video}: {results[0].error}")
    return {
        "clips": clips,
        "wall": (time.perf_counter() - start) / clips,
        "cpu": (time.process_time() - cpu) / clips,
    }


def cold_start(video: Path, model: Path, fast: bool) -> dict[str, float]:  # fast: with params' fast knobs
    """A fresh `python -m stages.predict` process: seconds to its JSON (the first score) and to its
    exit, its start-up share and the clip's."""
    cmd = [sys.executable, "-m", "stages.predict", str(video.resolve()), "--model", str(model.resolve())] + (
        ["--fast"] if fast else ["--exact"]
    )
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        first = proc.stdout.readline()  # the JSON is written at once, when the clip is scored
        scored = time.perf_counter() - start
        text = first + proc.stdout.read()
        returncode = proc.wait()
        seconds = time.perf_counter() - start
        err.seek(0)
        if returncode != 0:
            raise RuntimeError(f"cold run failed ({returncode}): {err.read()[-1000:]}")
    out = json.loads(text)
    return {
        "first_score_seconds": scored,
        "process_seconds": seconds,
        "startup_seconds": out["startup_seconds"],
        "clip_seconds": out["clips"][0]["seconds"],
    }


def compare_paths(exact: Predictor, fast: Predictor, videos: list[Path]) -> dict[str, Any]:
    """|fast - exact| score per output over clips both paths predict (mean, max), against the spread
    (standard deviation) of the exact scores across those clips, and the clip count."""
    gaps, scores = [], []
    for video in videos:
        a, b = exact.predict(video), fast.predict(video)
        if a.ok and b.ok:
            gaps.append([abs(b.scores[c] - a.scores[c]) for c in exact.columns])
            scores.append([a.scores[c] for c in exact.columns])
    if not gaps:
        return {"clips": 0, "mean": {}, "spread": {}, "max": float("nan")}
    gaps_arr, scores_arr = np.asarray(gaps), np.asarray(scores)
    return {
        "clips": len(gaps),
        "mean": dict(zip(exact.columns, gaps_arr.mean(0).tolist(), strict=True)),
        "spread": dict(zip(exact.columns, scores_arr.std(0).tolist(), strict=True)),
        "max": float(gaps_arr.max()),
    }


def report_lines(exact: dict[str, Any], fast: dict[str, Any], cold: dict[str, float]) -> list[str]:
    lines = [f"{'step':<10}{'exact s':>10}{'fast s':>10}{'ratio':>8}"]
    for step in STEPS:
        e, f = exact["steps"][step], fast["steps"][step]
        lines.append(f"{step:<10}{e:>10.3f}{f:>10.3f}{e / max(f, 1e-9):>8.1f}")
    lines.append(
        f"{'total':<10}{exact['total']:>10.3f}{fast['total']:>10.3f}{exact['total'] / fast['total']:>8.1f}"
    )
    lines.append(f"{'cpu':<10}{exact['cpu']:>10.3f}{fast['cpu']:>10.3f}{exact['cpu'] / fast['cpu']:>8.1f}")
    lines.append(f"detected frames: exact {exact['detected_frames']}, fast {fast['detected_frames']}")
    gap = np.abs(np.array(list(fast["scores"].values())) - list(exact["scores"].values()))
    lines.append(f"|fast - exact| scores: max {gap.max():.4f}, mean {gap.mean():.4f}")
    lines.append(
        "(fast: decoding runs in a background thread while detect and align work on the frames already"
        " decoded, so its steps overlap and sum to more than its total)"
    )
    verdict = "meets" if fast["total"] <= TARGET_SECONDS else "misses"
    lines.append(f"fast path {fast['total']:.3f} s per clip {verdict} the {TARGET_SECONDS:.1f} s target")
    lines.append(
        f"cold start (fresh process, --fast): {cold['first_score_seconds']:.2f} s to the first prediction, "
        f"of which {cold['startup_seconds']:.2f} s start-up (imports, MTCNN, model) and {cold['clip_seconds']:.2f} s the clip; "
        f"{cold['process_seconds']:.2f} s to its exit"
    )
    return lines


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=Path, default=REAL_CLIP)
    parser.add_argument("--model", type=Path, default=Path(PredictParams.load().model))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=4, help="clips per predict_many for the throughput figure"
    )
    parser.add_argument(
        "--threads", type=int, default=PredictParams.load().threads, help="torch/TF threads; 0: theirs"
    )
    parser.add_argument("--skip", choices=("none", "nonref", "bidir"), help="fast decoding's frame skipping")
    parser.add_argument(
        "--deblock", choices=("on", "off"), help="fast decoding's deblocking filter (default: params)"
    )
    parser.add_argument(
        "--compare", type=Path, help="also compare fast and exact scores on this folder's clips"
    )
    parser.add_argument("--compare-clips", type=int, default=10, help="how many clips of --compare (sorted)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    if not args.video.is_file():
        sys.exit(f"no video at {args.video}: the real sample lives in ../shared/data beside the repo")
    with tempfile.TemporaryDirectory() as tmp:
        model, untrained = args.model, not args.model.is_file()
        if untrained:
            model = untrained_checkpoint(Path(tmp) / "untrained.pt", load_params())
            print(f"no checkpoint at {args.model}: timing an untrained default-config network")
        load_start = time.perf_counter()
        exact_predictor = Predictor(model, threads=args.threads)
        fast_predictor = copy.copy(exact_predictor)  # the same model and detector
        fast_predictor.fast = PredictParams.load().fast_config()
        if args.skip:
            fast_predictor.fast = replace(fast_predictor.fast, skip=args.skip)
        if args.deblock:
            fast_predictor.fast = replace(fast_predictor.fast, deblock=args.deblock == "on")
        load_seconds = time.perf_counter() - load_start
        for predictor in (exact_predictor, fast_predictor) * 2:  # tracing of MTCNN's shapes and torch
            predictor.predict(args.video)
        exact = time_path(exact_predictor, args.video, args.repeat)
        fast = time_path(fast_predictor, args.video, args.repeat)
        batch = {
            name: throughput(p, args.video, args.batch)
            for name, p in (("exact", exact_predictor), ("fast", fast_predictor))
        }
        cold = cold_start(args.video, model, fast=True)
        compared = None
        if args.compare:
            videos = expand_inputs([args.compare])[: args.compare_clips]
            compared = compare_paths(exact_predictor, fast_predictor, videos)
    print(
        f"{args.video.name}: {args.repeat} runs each, median; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"threads: {args.threads or 'library defaults'}; in-process model and detector loading: {load_seconds:.2f} s"
    )
    print("\n".join(report_lines(exact, fast, cold)))
    for name, b in batch.items():
        print(
            f"{name} path, {b['clips']} clips in one predict_many: "
            f"{b['wall']:.3f} s and {b['cpu']:.3f} CPU s per clip"
        )
    if compared:
        means = ", ".join(f"{c[0].upper()} {v:.4f}" for c, v in compared["mean"].items())
        print(
            f"|fast - exact| on {compared['clips']} clips of {args.compare}: mean {means}; max {compared['max']:.4f}"
        )
        spread = ", ".join(f"{c[0].upper()} {v:.4f}" for c, v in compared["spread"].items())
        print(f"  against the exact scores' standard deviation across those clips: {spread}")
    if args.out:
        write_json(
            args.out,
            {
                "video": args.video.name,
                "untrained_model": untrained,
                "load_seconds": load_seconds,
                "exact": exact,
                "fast": fast,
                "cold": cold,
                "throughput": batch,
                "compared": compared,
                "load_average": os.getloadavg()[0],
            },
        )


if __name__ == "__main__":
    main()
