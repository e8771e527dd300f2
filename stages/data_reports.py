"""Stage data-reports: the reports of extract-frames, align-faces and compute-flow over all shards.

python -m stages.data_reports   # reports/data/{frames,faces,flow}.json from reports/data/<stage>/<k>.json

Each shard's report carries every clip's result; the stage's own report function then runs over
all of them at once, so the merged figures are those of one unsharded run.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from stages import align_faces, compute_flow, extract_frames
from stages.common import ClipResult, Shards, load_params, setup_logging, shard_report, write_json

log = logging.getLogger(__name__)

# params section -> the stage's report over a list of clip results
REPORTERS: dict[str, Callable[[list[ClipResult], dict[str, Any]], dict[str, Any]]] = {
    "frames": extract_frames.stage_report,
    "faces": align_faces.stage_report,
    "flow": compute_flow.stage_report,
}


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


if __name__ == "__main__":
    main(sys.argv[1:])
