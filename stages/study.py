"""The pre-registered ablation grid as DVC experiments: queue it, collect it, test it.

    python -m stages.study queue        # dvc exp run --queue -n study-<variant>-s<seed> -S ... evaluate
    dvc queue start                     # runs the queue (one at a time; `dvc queue status`, `dvc queue logs`)
    python -m stages.study collect      # dvc exp show --json -> reports/ablations/<variant>/seed<seed>/
    python -m stages.study table        # reports/ablations/ablations.{md,tex,json}, with the verdict

The grid (variants, seeds, the study size shared by every run, the equivalence margin) is
configs/studies/binding.yaml. Each experiment starts from the workspace's params.yaml and changes only what
its variant and seed say (`-S`); nothing rewrites params.yaml between runs. `collect` finds the
experiments by name in `dvc exp show --json`, checks that their params are the variant's, and reads
each one's test predictions, scores.json and params.yaml from its experiment commit with dvc.api.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from model.atomic import atomic_path
from stages import cli
from stages.common import load_params, setup_logging, write_json

log = logging.getLogger(__name__)

READS = "configs/studies/binding.yaml (--config), params `plot` and `evaluate`; collect: `dvc exp show --json` and the experiments' files"
WRITES = (
    "queue: DVC's experiment queue; collect: reports/ablations/<variant>/seed<k>/{predictions.csv,scores.json,"
    "params.yaml,binding.csv}; table: reports/ablations/ablations.{md,tex,json}; reports/logs/study.log"
)
FILES = {  # what collect copies from each experiment: its path there -> the name under <variant>/seed<k>/
    "predictions": "predictions.csv",
    "scores": "scores.json",
    "params.yaml": "params.yaml",
    "binding": "binding.csv",
}


def load_study(path: str | Path) -> dict[str, Any]:
    """configs/studies/binding.yaml, checked: every key known, seeds and variants non-empty, names safe."""
    study = yaml.safe_load(Path(path).read_text())
    known = {"prefix", "target", "seeds", "common", "variants", "margin", "alpha", "out_dir"}
    if not isinstance(study, dict) or set(study) - known:
        raise ValueError(f"{path}: unknown keys {sorted(set(study or {}) - known)}; allowed {sorted(known)}")
    seeds, variants = study.get("seeds") or [], study.get("variants") or {}
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"{path}: seeds must be a non-empty list of whole numbers >= 0, got {seeds!r}")
    if not variants:
        raise ValueError(f"{path}: variants is empty")
    for name, settings in variants.items():
        if not str(name).replace("_", "").isalnum():
            raise ValueError(f"{path}: variant name {name!r} must be letters, digits and underscores")
        if not isinstance(settings or {}, dict):
            raise ValueError(f"{path}: variant {name!r} must map params keys to values")
    margin = study.get("margin", 0.005)
    if not (isinstance(margin, int | float) and margin > 0):
        raise ValueError(f"{path}: margin must be a number > 0, got {margin!r}")
    return {
        "prefix": "study",
        "target": "evaluate",
        "common": {},
        "alpha": 0.05,
        "out_dir": "",  # where collect puts the runs; empty: plot.ablations_dir
        **study,
        "margin": float(margin),
    }


def experiment_name(study: dict[str, Any], variant: str, seed: int) -> str:
    return f"{study['prefix']}-{variant.replace('_', '-')}-s{seed}"


def _value(v: Any) -> str:
    """A -S value as DVC parses it (YAML): booleans lower-case."""
    return json.dumps(v) if isinstance(v, bool) else str(v)


def queue_commands(study: dict[str, Any]) -> list[list[str]]:
    """One `dvc exp run --queue` per variant and seed."""
    commands = []
    for variant, settings in study["variants"].items():
        for seed in study["seeds"]:
            sets = {**(study["common"] or {}), **(settings or {}), "train.seed": seed}
            cmd = ["dvc", "exp", "run", "--queue", "-n", experiment_name(study, variant, seed)]
            for key, value in sets.items():
                cmd += ["-S", f"{key}={_value(value)}"]
            commands.append([*cmd, study["target"]])
    return commands


def experiments(show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Name -> {rev, params} of every finished experiment in `dvc exp show --json`'s output: a list
    of baselines, each with `experiments`, ranges whose `revs` are the experiment commits (newest
    first) and whose `executor` says whether the run is queued, running, failed or done."""
    found: dict[str, dict[str, Any]] = {}
    for baseline in show:
        for exp_range in baseline.get("experiments") or []:
            state = (exp_range.get("executor") or {}).get("state")
            if state not in (None, "success"):  # queued, running or failed: nothing to read yet
                continue
            for exp in exp_range.get("revs") or []:
                name = exp.get("name") or exp_range.get("name")
                data = exp.get("data") or {}
                if not name or exp.get("error"):
                    continue
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                found.setdefault(name, {"rev": exp["rev"], "params": params})
    return found


def _param(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def collect(
    study: dict[str, Any], show: Any, root: Path, paths: dict[str, str], read
) -> dict[str, list[str]]:
    """Copy each study experiment's files into root/<variant>/seed<seed>/; `read(path, rev)` reads a
    file of an experiment commit. Returns the experiments collected and those missing."""
    found = experiments(show)
    done, missing = [], []
    for variant, settings in study["variants"].items():
        for seed in study["seeds"]:
            name = experiment_name(study, variant, seed)
            exp = found.get(name)
            if exp is None:
                missing.append(name)
                continue
            expected = {**(study["common"] or {}), **(settings or {}), "train.seed": seed}
            wrong = {
                k: _param(exp["params"], k) for k, v in expected.items() if _param(exp["params"], k) != v
            }
            if wrong:
                raise ValueError(f"experiment {name} has {wrong}, but its variant sets {expected}")
            dest = root / variant / f"seed{seed}"
            dest.mkdir(parents=True, exist_ok=True)
            for key, target in FILES.items():
                text = read(paths.get(key, key), exp["rev"])
                if text is None:
                    continue
                with atomic_path(dest / target) as tmp:
                    tmp.write_text(text)
            done.append(name)
            log.info("collected %s (%s) into %s", name, exp["rev"][:7], dest)
    return {"collected": done, "missing": missing}


def _dvc_read(path: str, rev: str) -> str | None:
    import dvc.api

    try:
        return dvc.api.read(path, repo=".", rev=rev)
    except FileNotFoundError:
        return None
    except Exception as err:  # dvc.api raises its own PathMissingError for files the commit lacks
        if type(err).__name__ in ("PathMissingError", "OutputNotFoundError"):
            return None
        raise


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("stages.study", __doc__, READS, WRITES)
    parser.add_argument("action", choices=("queue", "collect", "table", "curve"))
    parser.add_argument(
        "--config",
        default="configs/studies/binding.yaml",
        help="the grid (default configs/studies/binding.yaml)",
    )
    parser.add_argument("--dry-run", action="store_true", help="queue: print the commands, queue nothing")
    parser.add_argument(
        "--rev", help="collect: the commit the experiments were queued on (dvc exp show --rev; default HEAD)"
    )
    args = cli.parse(parser, argv)
    setup_logging("study")
    study = load_study(args.config)
    params = load_params()
    grid_root = Path(params["plot"]["ablations_dir"])
    root = Path(study["out_dir"]) if study["out_dir"] else grid_root
    if args.action == "queue":
        for cmd in queue_commands(study):
            print(" ".join(cmd))
            if not args.dry_run:
                subprocess.run(cmd, check=True)
        if not args.dry_run:
            log.info(
                "queued %d experiments; run them with `dvc queue start`",
                len(study["variants"]) * len(study["seeds"]),
            )
        return
    if args.action == "collect":
        cmd = ["dvc", "exp", "show", "--json", *(["--rev", args.rev] if args.rev else [])]
        show = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ev = params["evaluate"]
        paths = {
            "predictions": f"{ev['predictions_dir']}/{params['plot']['split']}.csv",
            "scores": ev["scores"],
            "binding": ev.get("binding", "reports/binding/test.csv"),
        }
        result = collect(study, show, root, paths, _dvc_read)
        write_json(root / "collected.json", result)
        log.info("collected %d experiments, %d missing", len(result["collected"]), len(result["missing"]))
        if result["missing"]:
            log.warning("missing: %s", ", ".join(result["missing"]))
        return
    from model import metrics
    from stages.report.ablations import TABLE, build_table, learning_curve
    from stages.report.tables import write_table

    if args.action == "curve":
        table, curve = learning_curve(root, grid_root, params["plot"]["full_variant"])
        write_table(
            table, root, "learning_curve", "Test 1-MAE (mean over seeds, ± s.d.) against the training clips."
        )
        write_json(root / "learning_curve.json", curve)
        log.info("learning curve of %d points written to %s", len(table), root)
        return

    cfg = params["plot"]
    boot = metrics.BootstrapConfig(int(cfg["n_resamples"]), float(cfg["confidence"]), int(cfg["seed"]))
    table, summary = build_table(root, cfg["full_variant"], boot, float(study["alpha"]), study["margin"])
    summary["study"] = {k: study[k] for k in ("seeds", "common", "variants", "target", "margin")}
    caption = (
        f"The pre-registered grid on the {cfg['split']} split: 1-MAE per trait (mean over seeds), the binding "
        f"checks, and each variant's change in MAE against '{cfg['full_variant']}' over seeds and clips "
        f"(two-level bootstrap, {boot.confidence:.0%} interval; bootstrap p, Holm-corrected; "
        f"* = significant at {study['alpha']})."
    )
    write_table(table, root, TABLE, caption)
    write_json(root / f"{TABLE}.json", summary)
    verdict = summary.get("preregistered", {}).get("verdict", "not tested (variants missing)")
    log.info("table of %d variants written; pre-registered hypothesis: %s", len(table), verdict)


if __name__ == "__main__":
    main(sys.argv[1:])
