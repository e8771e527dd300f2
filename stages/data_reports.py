"""Stage data-reports: the reports of extract-frames, align-faces and compute-flow over all shards.

python -m stages.data_reports   # reports/data/{frames,faces,flow}.json from reports/data/<stage>/<k>.json

Each shard's report carries every clip's result; the stage's own report function then runs over
all of them at once, so the merged figures are those of one unsharded run.

The merged reports carry every clip's digest and every skipped clip's reason (10,000 of each on FI
V2), so they are plain reports; DVC's metric is reports/data/metrics.json, a few headline figures
of them and of download-verify's reports/data/download.json (see `headline`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages import align_faces, cli, compute_flow, extract_frames
from stages.common import ClipResult, Shards, load_params, setup_logging, shard_report, write_json

log = logging.getLogger(__name__)

READS = (
    "params `shards`, `frames`, `faces`, `flow`; the shard reports reports/data/{frames,faces,flow}/<k>.json "
    "and reports/data/download.json"
)
WRITES = (
    "reports/data/{frames,faces,flow}.json, their headline reports/data/metrics.json (DVC's metric), "
    "reports/logs/data_reports.log"
)

# params section -> the stage's report over a list of clip results
REPORTERS: dict[str, Callable[[list[ClipResult], dict[str, Any]], dict[str, Any]]] = {
    "frames": extract_frames.stage_report,
    "faces": align_faces.stage_report,
    "flow": compute_flow.stage_report,
}


def metrics_path(params: dict[str, Any]) -> Path:
    """The data stages' headline beside download-verify's report: reports/data/metrics.json."""
    return Path(params["data"]["report"]).with_name("metrics.json")


def headline(
    data: dict[str, Any], frames: dict[str, Any], faces: dict[str, Any], flow: dict[str, Any]
) -> dict[str, Any]:
    """What `dvc metrics show` prints of the data: the clips each stage kept (videos verified, then with
    frames, aligned faces and flow) and the share of the kept clips' sampled frames with a face. Few,
    short keys: every leaf of a metrics file is a column of that table."""
    out: dict[str, Any] = {
        "videos": sum(data.get("counts", {}).get("kept", {}).values()),
        "frames": frames["ok"],
        "faces": faces["ok"],
        "flow": flow["ok"],
    }
    detection = faces.get("detection", {}).values()
    sampled = sum(d["frames"] for d in detection)
    if sampled:
        out["face_rate"] = sum(d["valid_frames"] for d in detection) / sampled
    return out


def merge_reports(section: str, params: dict[str, Any], shards: Shards) -> dict[str, Any]:
    """One stage's report over every shard's clips (in clip-name order), rebuilt from the clip results
    in the shard reports."""
    results: list[ClipResult] = []
    per_shard = {}
    for k in shards.ids:
        shard = json.loads(shard_report(params["report"], k).read_text())
        results += [ClipResult(**r) for r in shard["results"]]
        per_shard[str(k)] = {"clips": shard["clips"], "ok": shard["ok"], "skipped": shard["skipped"]}
        if "seconds" in shard:
            per_shard[str(k)]["seconds"] = shard["seconds"]
    results.sort(key=lambda r: r.clip)  # one order whatever the shards, so sums round alike
    report = REPORTERS[section](results, params)
    seconds = [s["seconds"] for s in per_shard.values() if "seconds" in s]
    if seconds:
        report["seconds"] = round(sum(seconds), 2)  # compute time over all shards, wherever they ran
    report["shards"] = per_shard
    return report


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.data_reports", __doc__, READS, WRITES), argv)
    logger = setup_logging("data_reports")
    params = load_params()
    shards = Shards.from_params(params.get("shards"))
    for section in REPORTERS:
        report = merge_reports(section, params[section], shards)
        write_json(params[section]["report"], report)
        logger.info(
            "%s: %d clips from %d shards -> %s",
            section,
            report["clips"],
            shards.count,
            params[section]["report"],
        )
    reports = {s: json.loads(Path(params[s]["report"]).read_text()) for s in ("data", *REPORTERS)}
    write_json(metrics_path(params), headline(**reports))


if __name__ == "__main__":
    main(sys.argv[1:])
