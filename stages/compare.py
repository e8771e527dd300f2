"""Ablations with significance: gather experiments' predictions and compare each variant to the full model.

Flow (one experiment = one variant and one seed):

    dvc exp run -S model.fusion.type=concat -S train.seed=1
    python -m stages.compare --collect concat          # copies this run's outputs to
                                                       # reports/ablations/concat/seed1/
    ...                                                # more variants and seeds
    python -m stages.compare --table                   # reports/ablations/ablations.{md,tex,json}

Per variant, each clip's absolute error (per trait) is averaged over the variant's seeds; the
variant is then compared with the full model on the clips both scored: mean difference in
error with a paired bootstrap CI, the Wilcoxon signed-rank p-value, Holm-corrected over the
variants. Scores (1-MAE, R²) are the mean over seeds, with their spread.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from stages import cli
from stages.common import load_params, setup_logging, write_json

# The statistics and the tables (SciPy, statsmodels, pandas: model/metrics.py, stages/report/) are
# imported by main once the arguments are read, so that --help never waits for them.
log = logging.getLogger(__name__)

READS = (
    "params `plot` (ablations_dir, split, full_variant, the bootstrap), `evaluate` and train.seed; "
    "--collect: this run's reports/predictions/<split>.csv, reports/scores.json and params.yaml; "
    "--table: every run collected under reports/ablations/"
)
WRITES = (
    "--collect: reports/ablations/<variant>/seed<seed>/; --table: reports/ablations/ablations.md, "
    ".tex and .json; reports/logs/compare.log"
)


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("stages.compare", __doc__, READS, WRITES)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--collect", metavar="VARIANT", help="copy this run's test outputs as VARIANT")
    group.add_argument(
        "--table", action="store_true", help="build the ablation table from the collected runs"
    )
    parser.add_argument("--seed", help="seed label of the collected run (default: params train.seed)")
    args = cli.parse(parser, argv)
    from model import metrics
    from stages.report.ablations import TABLE, build_table, collect
    from stages.report.tables import write_table

    setup_logging("compare")
    params = load_params()
    cfg = params["plot"]
    root = Path(cfg["ablations_dir"])
    if args.collect:
        seed = args.seed if args.seed is not None else params["train"]["seed"]
        collect(
            args.collect,
            seed,
            Path(params["evaluate"]["predictions_dir"]) / f"{cfg['split']}.csv",
            Path(params["evaluate"]["scores"]),
            Path("params.yaml"),
            root,
        )
        return
    boot = metrics.BootstrapConfig(int(cfg["n_resamples"]), float(cfg["confidence"]), int(cfg["seed"]))
    table, summary = build_table(root, cfg["full_variant"], boot, float(cfg["alpha"]))
    caption = (
        f"Ablations on the {cfg['split']} split: 1-MAE per trait (mean over seeds), and each variant's "
        f"change in per-clip MAE against '{cfg['full_variant']}' (errors averaged over seeds; paired bootstrap "
        f"{boot.confidence:.0%} CI; Wilcoxon signed-rank p, Holm-corrected; * = significant at {cfg['alpha']})."
    )
    write_table(table, root, TABLE, caption)
    write_json(root / f"{TABLE}.json", summary)
    log.info("ablation table of %d variants written", len(table))


if __name__ == "__main__":
    main(sys.argv[1:])
