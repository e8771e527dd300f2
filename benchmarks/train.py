"""Training and evaluation throughput, size and memory of the default and the full config.

    python -m benchmarks.train [--steps 3] [--full-batch 2] [--gpu-tflops 35] [--mfu 0.3]

For each config: parameters, FLOPs per clip (forward, counted by torch's FlopCounterMode),
clips per second for a training step (forward, backward, AdamW) and for evaluation, and the peak
memory of a training step (CUDA max allocated on a GPU, the process's peak RSS on the CPU; the
full config is measured at batch 1 and 2 and extrapolated to its batch size). From the full
config's FLOPs it projects the time to train on FI V2 (6000 clips, the configured epochs) on a
GPU of the given dense bf16 throughput and model FLOPs utilisation, against the targets of 48 h
and 12 GB (our goal: under 12 h and 8 GB). The baseline ratio printed is full/default cost.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from model.config import ModelConfig
from model.network import build_model
from stages.config import flatten

REPO = Path(__file__).resolve().parents[1]
FI_V2_TRAIN_CLIPS = 6000
CLIP_SECONDS = 15.3  # FI V2 clips are about 15 s: 5-fps sampling gives 77 faces, 76 flow steps


@dataclass
class Figures:
    name: str
    params_m: float
    gflops_fwd: float
    train_clips_s: float
    eval_clips_s: float
    peak_mb: float
    batch: int


def load_configs(overrides: Path | None) -> tuple[dict, dict]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if overrides is None:
        return params["model"], params["train"]
    model, train = dict(params["model"]), dict(params["train"])
    for dotted, value in flatten(yaml.safe_load(overrides.read_text())):
        section, *keys = dotted.split(".")
        if section not in ("model", "train"):
            continue
        node = model if section == "model" else train
        for k in keys[:-1]:
            node[k] = node = dict(node[k])
        node[keys[-1]] = value
    return model, train


def fake_batch(cfg: ModelConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Inputs of the shapes the loader gives a 15-s clip (values do not change the cost)."""
    steps = cfg.dynamic.frames or round(CLIP_SECONDS * 5) - 1
    faces = torch.randn(
        batch, cfg.static.frames, 3, cfg.static.input_size, cfg.static.input_size, device=device
    )
    flow = torch.randn(batch, steps, 2, cfg.dynamic.input_size, cfg.dynamic.input_size, device=device)
    mask = torch.ones(batch, steps, dtype=torch.bool, device=device)
    return faces, flow, mask


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # the process's peak RSS (KB)


def measure(name: str, model_params: dict, batch: int, steps: int, device: torch.device) -> Figures:
    cfg = ModelConfig.from_params(model_params)
    cfg.static.pretrained = cfg.dynamic.pretrained = "none"  # the cost is the same from any start
    model = build_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = fake_batch(cfg, batch, device)
    target = torch.rand(batch, cfg.n_outputs, device=device)

    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(*fake_batch(cfg, 1, device))
    gflops = counter.get_total_flops() / 1e9

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.mse_loss(model(*inputs).pred.float(), target)
        loss.backward()
        optimizer.step()

    def eval_step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"),
        ):
            model(*inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    train_s = timed(train_step, steps, device)
    peak = peak_memory_mb(device)
    model.eval()
    eval_s = timed(eval_step, steps, device)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    return Figures(name, n_params, gflops, batch / train_s, batch / eval_s, peak, batch)


def timed(step: callable, steps: int, device: torch.device) -> float:
    """Median seconds of `steps` calls after one warm-up call."""
    step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument(
        "--batch", type=int, default=0, help="batch of the default config (0: its train.batch_size)"
    )
    parser.add_argument("--full-batch", type=int, default=2, help="batch of the full config")
    parser.add_argument("--full", type=Path, default=REPO / "configs" / "full.yaml")
    parser.add_argument("--gpu-tflops", type=float, default=71.0, help="dense bf16 TFLOP/s (RTX 3090: 71)")
    parser.add_argument("--mfu", type=float, default=0.3, help="assumed model FLOPs utilisation")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default_model, default_train = load_configs(None)
    full_model, full_train = load_configs(args.full)
    rows = [
        measure("default", default_model, args.batch or int(default_train["batch_size"]), args.steps, device),
        measure("full", full_model, 1, args.steps, device),
        measure("full", full_model, args.full_batch, args.steps, device),
    ]
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(
        f"{'config':8} {'params M':>9} {'GFLOP/clip':>11} {'train clip/s':>13} {'eval clip/s':>12} {'peak MB':>9} batch"
    )
    for r in rows:
        print(
            f"{r.name:8} {r.params_m:9.2f} {r.gflops_fwd:11.2f} {r.train_clips_s:13.2f} "
            f"{r.eval_clips_s:12.2f} {r.peak_mb:9.0f} {r.batch:5d}"
        )
    default, full_1, full = rows
    print(f"full/default: {full.gflops_fwd / default.gflops_fwd:.1f}x the FLOPs per clip")

    epochs = int(full_train.get("epochs", 30))
    train_flops = 3 * full.gflops_fwd * 1e9 * FI_V2_TRAIN_CLIPS * epochs  # backward ~ 2x forward
    hours = train_flops / (args.gpu_tflops * 1e12 * args.mfu) / 3600
    print(
        f"projection, full config on FI V2 ({FI_V2_TRAIN_CLIPS} clips x {epochs} epochs): "
        f"{train_flops / 1e15:.0f} PFLOP -> {hours:.1f} h at {args.gpu_tflops:.0f} TFLOP/s and {args.mfu:.0%} MFU "
        f"(target 48 h, goal 12 h)"
    )
    if device.type == "cuda":
        print(
            f"measured on this GPU: {FI_V2_TRAIN_CLIPS * epochs / full.train_clips_s / 3600:.1f} h at batch {full.batch}"
        )
    batch = int(full_train.get("batch_size", 16))
    per_clip = (full.peak_mb - full_1.peak_mb) / max(1, full.batch - 1)
    print(
        f"peak memory of a full-config training step: {full.peak_mb:.0f} MB at batch {full.batch}, "
        f"{per_clip:.0f} MB per clip -> {full_1.peak_mb + per_clip * (batch - 1):.0f} MB projected at batch {batch} "
        "(target 12 GB, goal 8 GB)"
    )


if __name__ == "__main__":
    main()
