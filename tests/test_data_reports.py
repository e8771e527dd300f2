"""Merged stage reports over shards (stages/data_reports.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import align_faces, data_reports, extract_frames
from stages.common import ClipResult, Shards, result_dict, shard_of, shard_report, write_json


def clip_results(n: int) -> list[ClipResult]:
    results = []
    for i in range(n):
        split = ("train", "val", "test")[i % 3]
        if i % 5 == 4:
            results.append(ClipResult(f"c{i}", split, "skipped", reason="too short"))
            continue
        stats = {
            "frames": 10 + i,
            "bytes": 1000 * (i + 1),
            "seconds": 0.1 * i,
            "valid": 8 + i % 3,
            "confidence_mean": 0.9 + 0.001 * i,
            "confidence_min": 0.8 + 0.002 * i,
        }
        results.append(ClipResult(f"c{i}", split, "done" if i % 2 else "cached", stats=stats, digest=f"d{i}"))
    return results


@pytest.mark.parametrize(
    ("section", "stage_report"),
    [("frames", extract_frames.stage_report), ("faces", align_faces.stage_report)],
)
def test_merged_report_is_the_report_over_all_shards_clips(
    tmp_path: Path, section: str, stage_report
) -> None:
    results = clip_results(17)
    params = {"report": str(tmp_path / f"{section}.json")}
    parts = [[r for r in results if shard_of(r.clip, 3) == k] for k in range(3)]
    for k, part in enumerate(parts):
        report = stage_report(part, params) | {"seconds": 1.5 * (k + 1)}
        write_json(shard_report(params["report"], k), report | {"results": [result_dict(r) for r in part]})
    merged = data_reports.merge_reports(section, params, Shards(ids=(0, 1, 2)))
    whole = json.loads(json.dumps(stage_report(sorted(results, key=lambda r: r.clip), params)))
    assert {k: v for k, v in merged.items() if k not in ("shards", "seconds")} == whole
    assert merged["seconds"] == pytest.approx(1.5 + 3.0 + 4.5)
    assert {k: s["clips"] for k, s in merged["shards"].items()} == {
        str(k): len(p) for k, p in enumerate(parts)
    }
