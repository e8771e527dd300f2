"""Stage ceiling: the perception ceiling of the known-answer data, beside the oracle.

An ideal observer of what the pipeline samples reads tint and shade exactly and the speaking and
blink rates only from the mouth and eyelid signals at `frames.fps` (stages/sources/ceiling.py).
Its 1-MAE on the validation and test clips is the most a model of the pipeline's inputs can reach;
evaluate reports the share of the baseline-to-ceiling gap a model closes. The real data has no
generator: the stage then writes only a note saying so.
"""

from __future__ import annotations

import logging
import sys
import time

from stages import cli
from stages.common import load_params, setup_logging, write_json

log = logging.getLogger(__name__)

READS = "params `data` (source, seed, synthetic) and `frames.fps`"
WRITES = "reports/ceiling.json, reports/logs/ceiling.log"
REPORT = "reports/ceiling.json"


def main(argv: list[str] | None = None) -> None:
    cli.parse(cli.parser("stages.ceiling", __doc__, READS, WRITES), argv)
    from model.params import ConfigError
    from stages.sources.synthetic import SyntheticConfig

    setup_logging("ceiling")
    params = load_params()
    data = params["data"]
    if data.get("source") != "synthetic":
        write_json(
            REPORT,
            {"skipped": f"data.source is {data.get('source')!r}: only the synthetic data has a ceiling"},
        )
        return
    try:
        cfg = SyntheticConfig.from_params(data.get("synthetic"))
    except ConfigError as exc:
        raise SystemExit(f"ceiling: {exc}") from None
    fps = float(params["frames"]["fps"])
    if not fps > 0:
        raise SystemExit(f"ceiling: frames.fps: {fps!r} is not allowed; expected a rate > 0")
    from stages.sources.ceiling import perception_ceiling

    start = time.perf_counter()
    report = perception_ceiling(cfg, int(data.get("seed", 0)), fps)
    report["seconds"] = round(time.perf_counter() - start, 1)
    write_json(REPORT, report)
    for split in ("val", "test"):
        if split in report:
            log.info(
                "%s: ceiling mean 1-MAE %.4f, oracle %.4f",
                split,
                report[split]["mean"],
                report["oracle"][split]["mean"],
            )


if __name__ == "__main__":
    main(sys.argv[1:])
