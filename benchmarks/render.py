"""Seconds per synthetic clip of render_frames, against the plain whole-frame composite, in the same run.

Ours: stages.sources.synthetic.render_frames, which blends face and backdrop only inside the warped
face canvas's box, and the open mouth and closing lids only inside theirs. Plain: every blend over
the whole canvas and the whole frame (`reference_frames`, which tests/test_synthetic.py also uses
to check that both give the same bytes). Video encoding is left out of both.

    python -m benchmarks.render [--clips 20] [--params params.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stages.common import load_params, write_json
from stages.sources import synthetic as syn


def reference_frames(spec: syn.ClipSpec, cfg: syn.SyntheticConfig) -> np.ndarray:
    """A clip's frames with every blend over the whole canvas and frame: what render_frames must equal."""
    rig, motion = syn.build_rig(spec, cfg), syn.clip_motion(spec, cfg)
    bg = syn.background(spec.background_id, cfg.size, syn._clip_rng(spec.seed, 3))
    xx, yy = np.meshgrid(np.arange(syn.CANVAS, dtype=np.float32), np.arange(syn.CANVAS, dtype=np.float32))
    opening, dsize = cfg.mouth_open * syn.CANVAS, (cfg.size, cfg.size)
    frames = np.empty((len(motion.mouth), cfg.size, cfg.size, 3), np.uint8)
    for k in range(len(frames)):
        mouth, lids = float(motion.mouth[k]), float(motion.lids[k])
        drop = mouth * rig.jaw_drop + lids * rig.lid_drop
        drop = drop + np.tensordot(motion.twitch[k].astype(np.float32), rig.twitch_fields, axes=1)
        face = cv2.remap(rig.texture, xx, yy - drop, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        gap = mouth * opening
        if gap >= 0.5:
            hole = np.zeros((syn.CANVAS, syn.CANVAS), np.float32)
            centre = (round(rig.mouth_centre[0]), round(rig.mouth_centre[1] + gap / 2))
            axes = (max(1, round(0.85 * rig.mouth_half_width)), max(1, round(gap / 2)))
            cv2.ellipse(hole, centre, axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
            face = face * (1 - hole[..., None]) + syn.MOUTH_COLOUR * hole[..., None]
        if lids > 0.02:
            inside = rig.eye_dist <= 1.0
            edge = np.clip((lids - rig.eye_top) * 6.0, 0, 1) * inside * 0.7
            lash = np.clip(1 - np.abs(lids - rig.eye_top) * 12.0, 0, 1) * inside * 0.6
            lid = rig.lid_colour * (1 - 0.7 * lash[..., None])
            face = face * (1 - edge[..., None]) + lid * edge[..., None]
        face = np.clip(face + rig.marks, 0.0, 1.0).astype(np.float32)
        warped = cv2.warpAffine(face, motion.affine[k], dsize, flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(syn._face_mask(), motion.affine[k], dsize, flags=cv2.INTER_LINEAR)[..., None]
        frames[k] = np.clip((bg + alpha * (warped - bg)) * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=20, help="clips of the default design to render")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    cfg = syn.SyntheticConfig.from_params(load_params("data", args.params)["synthetic"])
    specs = syn.sample_design(cfg, 0)[0][: args.clips]
    seconds = {"ours": [], "plain": []}
    same = True
    for spec in specs:  # alternate, so that a busy machine slows both alike
        start = time.perf_counter()
        ours = syn.render_frames(spec, cfg)
        seconds["ours"].append(time.perf_counter() - start)
        start = time.perf_counter()
        plain = reference_frames(spec, cfg)
        seconds["plain"].append(time.perf_counter() - start)
        same &= bool(np.array_equal(ours, plain))
    result = {
        "clips": len(specs),
        "frames_per_clip": round(cfg.seconds * cfg.fps),
        "size": cfg.size,
        "ours_s_per_clip": round(float(np.median(seconds["ours"])), 4),
        "plain_s_per_clip": round(float(np.median(seconds["plain"])), 4),
        "identical_frames": same,
    }
    result["speedup"] = round(result["plain_s_per_clip"] / result["ours_s_per_clip"], 2)
    print(
        f"render_frames, {result['clips']} clips of {result['frames_per_clip']} frames at {cfg.size} px: "
        f"ours {result['ours_s_per_clip']:.3f} s per clip, plain whole-frame composite "
        f"{result['plain_s_per_clip']:.3f} s: {result['speedup']:.2f}x; identical frames: {same}"
    )
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
