"""The paper's generated part: every number, table and outcome-dependent sentence of paper/paper.tex,
from what the pipeline wrote under reports/ and the params that made the run; then the PDF.

`generate` writes paper/generated/: numbers.tex (one \\newcommand per number the text uses, and per
sentence whose claim depends on the outcome, so the prose cannot contradict the statistics),
results.tex, published.tex, ablations.tex and configs.tex (tabulars), and figures.tex (each figure
the paper shows, or a framed note where the run drew none). `build_pdf` runs latexmk in a scratch
folder and moves the PDF into place atomically. A missing report gives "n/a" numbers and sentences
that say the analysis was not run, never a failed build.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.atomic import atomic_path
from model.config import flatten
from model.records import TRAITS
from stages.report.tables import latex_escape, read_published

log = logging.getLogger(__name__)

NA = "n/a"
PERCENT = "\\%"
APT_PACKAGES = (
    "latexmk texlive-latex-base texlive-latex-recommended texlive-fonts-recommended texlive-latex-extra"
)
INSTALL_HINT = f"sudo apt-get install -y --no-install-recommends {APT_PACKAGES}"
# The figures the paper shows: macro -> file stem under the figures folder.
FIGURES = {"FigScores": "scores_test", "FigImportance": "stream_importance", "FigAttention": "attention_maps"}
# The PDF's dates and /ID come from this (2026-01-01), so the same inputs give the same bytes.
SOURCE_DATE_EPOCH = "1767225600"


BACKBONES = {
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "light3d": "light 3D CNN",
    "r3d_18": "R3D-18",
    "r2plus1d_18": "R(2+1)D-18",
}
FUSIONS = {"cross_attention": "cross-attention", "concat": "concatenation", "add": "sum"}
DIRECTIONS = {
    "bidirectional": "both ways",
    "static_to_dynamic": "faces query flow",
    "dynamic_to_static": "flow queries faces",
}
RAGGED = ">{\\raggedright\\arraybackslash}p"


class PaperError(RuntimeError):
    """The paper cannot be built (LaTeX missing or failing): the message says why and what to do."""


# ---------------------------------------------------------------- formatting


def f4(x: float | None) -> str:
    return NA if x is None else f"{x:.4f}"


def pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.0f}"


def signed(x: float | None, digits: int = 4) -> str:
    return NA if x is None else f"${x:+.{digits}f}$"


def pvalue(p: float | None) -> str:
    if p is None:
        return NA
    if p >= 0.001:
        return f"{p:.2g}"
    mantissa, exponent = f"{p:.1e}".split("e")
    return f"${mantissa}\\times 10^{{{int(exponent)}}}$"


def camel(name: str) -> str:
    """A variant or trait name as letters only (LaTeX macro names take no digits or underscores)."""
    return "".join(w.capitalize() for w in re.split(r"[^A-Za-z]+", name) if w)


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- inputs


@dataclass
class Run:
    """What the paper reads of one run: each report, or None where it is absent or was skipped."""

    metrics: dict[str, Any]
    scores: dict[str, Any]
    evaluate: dict[str, Any] | None
    download: dict[str, Any] | None
    data_metrics: dict[str, Any] | None
    train: dict[str, Any] | None
    importance: dict[str, Any] | None
    attention: dict[str, Any] | None
    ablations: dict[str, Any] | None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> {"params", "gaps"}


def read_report(path: str | Path) -> dict[str, Any] | None:
    """A JSON report, or None when it is absent or says it was skipped."""
    path = Path(path)
    if not path.is_file():
        log.warning("%s is absent: its part of the paper says so", path)
        return None
    d = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(d, dict) and isinstance(d.get("skipped"), str):  # a stage that did not run says why
        log.warning("%s: skipped (%s)", path, d["skipped"])
        return None
    return d


def read_variants(root: Path) -> dict[str, dict[str, Any]]:
    """Per collected ablation variant: its first seed's params and each seed's test gap closed per trait."""
    out: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in root.glob("*/") if p.is_dir()):
        seeds = sorted(folder.glob("seed*/"))
        params = next((s / "params.yaml" for s in seeds if (s / "params.yaml").is_file()), None)
        gaps = []
        for seed in seeds:
            scores = read_report(seed / "scores.json") if (seed / "scores.json").is_file() else None
            gap = (scores or {}).get("gap_closed", {}).get("test")
            if gap:
                gaps.append(gap)
        out[folder.name] = {
            "params": yaml.safe_load(params.read_text(encoding="utf-8")) if params else {},
            "gaps": gaps,
        }
    return out


def read_run(cfg: Any) -> Run:
    metrics = read_report(cfg.metrics)
    scores = read_report(cfg.scores)
    if not metrics or not scores:
        raise FileNotFoundError(f"{cfg.metrics} and {cfg.scores} are needed: run evaluate first")
    root = Path(cfg.ablations_dir)
    return Run(
        metrics=metrics,
        scores=scores,
        evaluate=read_report(cfg.evaluate_report),
        download=read_report(cfg.download),
        data_metrics=read_report(cfg.data_metrics),
        train=read_report(cfg.train_report),
        importance=read_report(cfg.importance),
        attention=read_report(cfg.attention_mass),
        ablations=read_report(root / "ablations.json"),
        variants=read_variants(root) if root.is_dir() else {},
    )


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`, nested mappings merged key by key (as stages.config applies a config)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merged(out[key], value)
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
            else value
        )
    return out


# ---------------------------------------------------------------- numbers and sentences


def _get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, Mapping) or key not in d:
            return None
        d = d[key]
    return d


def headline_numbers(run: Run) -> dict[str, str]:
    m, s = run.metrics, run.scores
    n = {
        "TestMAE": f4(_get(m, "test", "1-mae")),
        "TestRsq": f"{_get(m, 'test', 'r2'):.3f}" if _get(m, "test", "r2") is not None else NA,
        "ValMAE": f4(_get(m, "val", "1-mae")),
        "GapClosed": pct(_get(m, "test", "gap")),
        "ValGap": pct(_get(m, "val", "gap")),
        "TestMAELo": f4(_get(s, "test", "mean", "1-mae_lo")),
        "TestMAEHi": f4(_get(s, "test", "mean", "1-mae_hi")),
        "TestCCC": f"{_get(s, 'test', 'mean', 'ccc'):.3f}"
        if _get(s, "test", "mean", "ccc") is not None
        else NA,
        "TestPearson": f"{_get(s, 'test', 'mean', 'pearson_r'):.3f}"
        if _get(s, "test", "mean", "pearson_r") is not None
        else NA,
        "BaselineMAE": f4(_get(s, "baseline", "test", "mean", "1-mae")),
        "OracleMAE": f4(_get(s, "oracle", "test", "mean", "1-mae")),
        "GapLo": pct(_get(s, "gap_closed", "test", "mean_lo")),
        "GapHi": pct(_get(s, "gap_closed", "test", "mean_hi")),
        "TestClips": str(_get(s, "test", "n_clips") or NA),
        "ValClips": str(_get(s, "val", "n_clips") or NA),
    }
    for t in TRAITS:
        name = camel(t)
        n[f"MAE{name}"] = f4(_get(s, "test", t, "1-mae"))
        n[f"Gap{name}"] = pct(_get(s, "gap_closed", "test", t))
    gaps = {t: _get(s, "gap_closed", "test", t) for t in TRAITS}
    known = {t: g for t, g in gaps.items() if g is not None}
    n["WeakestTraits"] = (
        join_words([t for t, _ in sorted(known.items(), key=lambda kv: kv[1])[:2]]) if known else NA
    )
    return n


def data_numbers(run: Run, params: Mapping[str, Any]) -> dict[str, str]:
    kept = _get(run.download, "counts", "kept") or {}
    videos = _get(run.download, "videos") or {}
    fps, frames = _get(videos, "fps", "median"), _get(videos, "frames", "median")
    n = {
        "SplitTrain": str(kept.get("train", NA)),
        "SplitVal": str(kept.get("val", NA)),
        "SplitTest": str(kept.get("test", NA)),
        "ClipSeconds": f"{frames / fps:.0f}" if fps and frames else NA,
        "VideoFps": f"{fps:.0f}" if fps else NA,
        "FaceRate": f"{100 * run.data_metrics['face_rate']:.1f}"
        if _get(run.data_metrics, "face_rate")
        else NA,
        "ClipsWithFlow": str(_get(run.data_metrics, "flow") or NA),
        "ClipsAll": str(_get(run.data_metrics, "videos") or NA),
        "TrainClips": str(_get(run.train, "clips", "train") or NA),
        "EpochsRun": str(_get(run.train, "epochs_run") or NA),
        "BestEpoch": str(_get(run.train, "best_epoch") + 1)
        if _get(run.train, "best_epoch") is not None
        else NA,
        "TrainMinutes": f"{run.train['seconds'] / 60:.0f}" if _get(run.train, "seconds") else NA,
        "TrainDevice": {"cpu": "CPU", "cuda": "GPU"}.get(str(_get(run.train, "device")), NA),
        "LabelNoise": str(_get(params, "data", "synthetic", "label_noise") or NA),
        "SampleFps": str(_get(params, "frames", "fps") or NA),
        "Resamples": str(_get(params, "evaluate", "n_resamples") or NA),
        "DataSource": latex_escape(str(_get(params, "data", "source") or NA)),
    }
    synthetic = _get(params, "data", "synthetic") or {}
    for key, name in (
        ("mouth_hz_min", "MouthHzMin"),
        ("mouth_hz_max", "MouthHzMax"),
        ("blink_hz_min", "BlinkHzMin"),
        ("blink_hz_max", "BlinkHzMax"),
        ("blink_seconds", "BlinkSeconds"),
        ("size", "SynthSize"),
        ("fps", "SynthFps"),
    ):
        n[name] = f"{synthetic[key]:g}" if isinstance(synthetic.get(key), int | float) else NA
    return n


def unseen_sentence(run: Run) -> str:
    """How many test clips show a person with no clip in training, and their score."""
    unseen = _get(run.evaluate, "test", "unseen_identity_clips")
    total = _get(run.evaluate, "test", "clips")
    if unseen is None:
        return (
            "This run's reports do not count the test clips whose face has no clip in training (its "
            "evaluation predates that count); the generator that made it drew every split's faces from one "
            "shared pool, so most test clips show a person also seen in training, and the test score "
            "measures generalisation to new factor values more than to new people."
        )
    score = _get(run.metrics, "unseen", "1-mae")
    gap = _get(run.metrics, "unseen", "gap")
    scored = (
        f" On them the mean 1-MAE is {f4(score)}"
        + (f" ({pct(gap)}\\% of the gap closed)." if gap is not None else ".")
        if score is not None
        else " They are too few to score apart."
    )
    if unseen == total:
        return f"No test clip shows a face that has a clip in training: all {total} are of unseen people."
    return f"{unseen} of the {total} test clips show a face with no clip in training.{scored}"


def ceiling_numbers(run: Run) -> dict[str, str]:
    """The perception ceiling (an ideal observer of the sampled frames, stage ceiling) where evaluate
    put it beside the scores; otherwise a sentence saying that no report measures it."""
    top = _get(run.scores, "ceiling", "test", "mean")
    reach = _get(run.scores, "reachable_gap", "test", "mean")
    if top is None:
        return {
            "CeilingMAE": NA,
            "ReachableGap": NA,
            "CeilingSentence": "No report of this run measures that perceptual ceiling, so we quote none; "
            "estimating it---for instance with an observer given the true mouth and eyelid signals at the "
            "sampling rate---is left to future work.",
        }
    sentence = (
        f"An ideal observer of the sampled frames, which reads the static factors exactly and estimates the "
        f"rates from the generator's own mouth and eyelid signals at the sampling rate, reaches {f4(top)} on "
        f"this test split: that is the perceptual ceiling"
    )
    sentence += (
        f", and the model closes {pct(reach)}\\% of the baseline-to-ceiling gap."
        if reach is not None
        else "."
    )
    return {"CeilingMAE": f4(top), "ReachableGap": pct(reach), "CeilingSentence": sentence}


def protocol_sentence(run: Run, source: str) -> str:
    """Whether this run's test split was sealed: faces of its own, and nothing chosen by reading it."""
    unseen = _get(run.evaluate, "test", "unseen_identity_clips")
    total = _get(run.evaluate, "test", "clips")
    if source != "synthetic":
        return "No setting of the full configuration was chosen by reading this test split."
    if unseen is not None and unseen == total:
        return (
            "The default settings were chosen in an earlier version of the project, partly by reading the test "
            "split of that version; this run's test split is another one, with faces, backgrounds and a seed "
            "stream of its own, and nothing was chosen by looking at it."
        )
    return (
        "The default settings were tuned on this synthetic data while the test scores were visible---among "
        "other read-outs, how well each factor can be recovered from the predictions over validation and test "
        "clips together---so this test split is not sealed, and its figures may be optimistic."
    )


def ablation_protocol_sentence(run: Run, full: str) -> str:
    """A caveat when the collected ablation runs scored other test clips than this run."""
    clips = _get(run.ablations, "variants", full, "clips")
    ours = _get(run.scores, "test", "n_clips")
    if clips is None or ours is None or clips == ours:
        return ""
    return (
        f"The ablation runs were collected under another protocol than this run ({clips} test clips against "
        f"{ours}); their figures compare the variants with each other, not with the main result."
    )


def gap_sentence(run: Run, target: float) -> str:
    gap = _get(run.metrics, "test", "gap")
    lo, hi = (
        _get(run.scores, "gap_closed", "test", "mean_lo"),
        _get(run.scores, "gap_closed", "test", "mean_hi"),
    )
    if gap is None:
        return "Without an oracle (real data) there is no gap to close."
    t = pct(target)
    where = "above" if gap >= target else "below"
    if lo is None or hi is None:
        return f"That is {where} the project's target of {t}\\%."
    if lo >= target:
        tail = "and its 95\\% interval lies above the target too"
    elif hi < target:
        tail = "and its 95\\% interval lies below the target"
    else:
        tail = f"but its 95\\% interval ({pct(lo)}--{pct(hi)}\\%) reaches {'below' if gap >= target else 'above'} it"
    return f"That is {where} the project's target of {t}\\%, {tail}."


def seeds_sentence(run: Run, full: str) -> str:
    gaps = [g.get("mean") for g in run.variants.get(full, {}).get("gaps", []) if g.get("mean") is not None]
    if len(gaps) < 2:
        return ""
    return (
        f"Over the full model's {len(gaps)} seeds of the ablation runs the test gap closed was "
        f"{join_words([pct(g) + PERCENT for g in gaps])}."
    )


def variant_change(run: Run, full: str, variant: str) -> dict[str, Any]:
    """The model params that differ between the full model's collected run and the variant's."""
    a = flatten(run.variants.get(full, {}).get("params", {}).get("model", {}))
    b = flatten(run.variants.get(variant, {}).get("params", {}).get("model", {}))
    return {k: b.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _clause(name: str, v: Mapping[str, Any]) -> str:
    c = v["vs_full"]
    return (
        f"{name} ($\\Delta$MAE {signed(c['mae_diff'])}, 95\\% CI [{signed(c['mae_diff_lo'])}, "
        f"{signed(c['mae_diff_hi'])}], Holm $p$ = {pvalue(c['p_holm'])})"
    )


def label(variant: str, change: Mapping[str, Any], short: bool = False) -> str:
    """What a variant is, from what it changed: "concat fusion", "the static-only model" ("static only")."""
    if "fusion.type" in change:
        return latex_escape(f"{change['fusion.type']} fusion")
    if "streams" in change:
        return latex_escape(f"{change['streams']} only" if short else f"the {change['streams']}-only model")
    return latex_escape(variant.replace("_", " "))


def ablation_sentences(run: Run, full: str) -> dict[str, str]:
    """Whether cross-attention beat the simpler fusions and whether fusion beat each single stream,
    worded from the paired tests (positive difference: the variant errs more)."""
    variants = _get(run.ablations, "variants") or {}
    compared = {n: v for n, v in variants.items() if n != full and "vs_full" in v}
    fusion, streams = {}, {}
    for name, v in compared.items():
        change = variant_change(run, full, name)
        (fusion if "fusion.type" in change else streams if "streams" in change else {})[name] = (v, change)

    def verdict(group: dict, absent: str, subject: str) -> str:
        if not group:
            return absent
        beat, lost, level = [], [], []
        for name, (v, change) in sorted(group.items()):
            c = v["vs_full"]
            clause = _clause(label(name, change), v)
            (beat if c["significant"] and c["mae_diff"] > 0 else lost if c["significant"] else level).append(
                clause
            )
        parts = []
        if beat:
            parts.append(f"{subject} beat {join_words(beat)}")
        if lost:
            parts.append(f"{join_words(lost)} beat {subject}")
        if level:
            parts.append(
                f"{subject} showed no significant difference from {join_words(level)} (not an equivalence test)"
            )
        text = "; ".join(parts) + "."
        return text[0].upper() + text[1:]

    def short(group: dict, subject: str, others: str) -> str:
        if not group:
            return f"no {others} run has been collected"
        cs = [v["vs_full"] for v, _ in group.values()]
        if all(c["significant"] and c["mae_diff"] > 0 for c in cs):
            return f"{subject} significantly beats every {others} variant"
        if any(c["significant"] and c["mae_diff"] < 0 for c in cs):
            return f"a {others} variant significantly beats {subject}"
        if any(c["significant"] for c in cs):
            return f"{subject} significantly beats some {others} variants and is level with the others"
        return (
            f"{subject} shows no significant difference from any {others} variant (not an equivalence test)"
        )

    full_seeds = _get(variants, full, "seeds")
    clips, ours = _get(variants, full, "clips"), _get(run.scores, "test", "n_clips")
    lead = "In the ablations"
    if clips is not None and ours is not None and clips != ours:
        lead = f"In ablations collected under another protocol ({clips} test clips against this run's {ours})"
    return {
        "AblationsLead": lead,
        "FusionShort": short(fusion, "cross-attention", "simpler-fusion"),
        "StreamShort": short(streams, "the fused model", "single-stream"),
        "FusionVerdict": verdict(
            fusion,
            "No run with a simpler fusion has been collected, so this run says nothing about cross-attention "
            "against concatenation or addition.",
            "cross-attention",
        ),
        "StreamVerdict": verdict(streams, "No single-stream run has been collected.", "the fused model"),
        "PreregSentence": preregistered_sentence(run),
        "AblFullSeeds": str(full_seeds or NA),
        "AblVariants": str(len(variants) or NA),
    }


def preregistered_sentence(run: Run) -> str:
    """The pre-registered binding study's tests and verdict (ablations.json `preregistered`), in words."""
    pre = _get(run.ablations, "preregistered")
    if not pre:
        return (
            "The pre-registered binding study (cross-attention, concat, add and a shuffled-position control, "
            "five seeds each) has not been collected with this run."
        )
    trait = latex_escape(str(pre.get("binding_trait", "neuroticism")))

    def test(key: str, name: str) -> str:
        t = pre[key]
        return (
            f"{name} {signed(t['diff_1mae'])} (95\\% CI [{signed(t['lo'])}, {signed(t['hi'])}], "
            f"Holm $p$ = {pvalue(t['p_holm'])})"
        )

    others = pre["other_traits_cross_attention_vs_concat"]
    level = (
        f"equivalent within $\\pm${pre['margin']:g} (TOST $p$ = {pvalue(others['p_tost'])})"
        if others["equivalent"]
        else f"not shown equivalent within $\\pm${pre['margin']:g} (TOST $p$ = {pvalue(others['p_tost'])})"
    )
    return (
        f"On the binding trait ({trait}), the difference in \\oneminusmae{{}} over seeds and clips was, for "
        f"{test('cross_attention_vs_concat', 'cross-attention minus concat')}, "
        f"{test('cross_attention_vs_add', 'cross-attention minus add')}, and "
        f"{test('shuffled_vs_concat', 'the shuffled-position control minus concat')}; on the other four traits "
        f"cross-attention and concat were {level}. By the pre-registered rule the hypothesis that "
        f"cross-attention binds place to place is \\emph{{{pre['verdict']}}} at this study size."
    )


def loss(x: float) -> str:
    """A drop in 1-MAE as words: a drop at or below zero is no loss."""
    return f"nothing ({signed(x)})" if x <= 0 else f4(x)


def importance_method(run: Run) -> tuple[str, str]:
    """How analyze removed a stream: ("permuting", "permuted across clips"), or zeroing for a run made
    before the permutation test (its report names no method)."""
    if _get(run.importance, "streams", "method") == "permutation":
        return "permuting", "permuted across clips"
    return "zeroing", "set to zero"


def importance_numbers(run: Run) -> dict[str, str]:
    streams = _get(run.importance, "streams") or {}
    verb, verbed = importance_method(run)
    n = {
        "ImportanceClips": str(_get(run.importance, "clips") or NA),
        "ImportanceVerbed": verbed,
        "DropStatic": f4(_get(streams, "drop_static", "mean")),
        "DropDynamic": f4(_get(streams, "drop_dynamic", "mean")),
        "WithoutStaticMAE": f4(_get(streams, "without_static", "mean")),
        "WithoutDynamicMAE": f4(_get(streams, "without_dynamic", "mean")),
    }
    for t in TRAITS:
        n[f"DropStatic{camel(t)}"] = f4(_get(streams, "drop_static", t))
        n[f"DropDynamic{camel(t)}"] = f4(_get(streams, "drop_dynamic", t))
    if not streams:
        n["ImportanceMethod"] = "Stream importance was not measured in this run (analyze was skipped)."
        n["ImportanceSentence"] = ""
        return n
    if verb == "permuting":
        n["ImportanceMethod"] = (
            f"Each stream's input was permuted across the {n['ImportanceClips']} test clips "
            f"({streams.get('repeats', NA)} permutations: each clip gets another clip's real faces or flow, so "
            "the input stays in distribution)."
        )
    else:
        n["ImportanceMethod"] = (
            f"Each stream's input was set to zero for the {n['ImportanceClips']} test clips. This run's analysis "
            "predates the permutation test: a zeroed input is one the network never saw, so each drop mixes "
            "what the stream carries with the shock of an out-of-distribution input."
        )
    ds, dd = streams["drop_static"], streams["drop_dynamic"]
    more = "motion" if dd["mean"] > ds["mean"] else "appearance"
    Verb = verb.capitalize()
    n["ImportanceSentence"] = (
        f"{Verb} the flow lowers the test mean 1-MAE by {f4(dd['mean'])}, {verb} the faces "
        f"by {f4(ds['mean'])}: the fused network leans more on {more}. Per trait the drops follow the "
        f"generator: without its faces the model loses {loss(ds['openness'])} on openness (appearance only) and "
        f"{loss(ds['extraversion'])} on extraversion (motion only); without its flow it loses "
        f"{loss(dd['extraversion'])} on extraversion and {loss(dd['openness'])} on openness."
        if follows_generator(streams)
        else f"{Verb} the flow lowers the test mean 1-MAE by {f4(dd['mean'])}, {verb} the "
        f"faces by {f4(ds['mean'])}; per trait the drops do not follow the generator (openness, appearance "
        f"only, loses {f4(ds['openness'])} without its faces and {f4(dd['openness'])} without its flow; "
        f"extraversion, motion only, {f4(ds['extraversion'])} and {f4(dd['extraversion'])})."
    )
    return n


def follows_generator(streams: Mapping[str, Any]) -> bool:
    """Openness (appearance only) needs the faces more than extraversion does, and extraversion (motion
    only) the flow more than openness does."""
    ds, dd = streams["drop_static"], streams["drop_dynamic"]
    return ds["openness"] > ds["extraversion"] and dd["extraversion"] > dd["openness"]


def _lift_word(lift: float) -> str:
    """What tokens do with a region, for a plural subject: lift = attention share / area share."""
    if lift >= 1.5:
        return "prefer"
    if lift <= 1 / 1.5:
        return "avoid"
    return "are about indifferent to"


def attention_numbers(run: Run) -> dict[str, str]:
    a = run.attention or {}
    n: dict[str, str] = {}
    for direction, short in (("static_to_dynamic", "SD"), ("dynamic_to_static", "DS")):
        regions = _get(a, direction, "regions") or {}
        grid = _get(a, direction, "grid")
        n[f"AttnGrid{short}"] = "$\\times$".join(str(g) for g in grid) if grid else NA
        for region, name in (("eyes", "Eyes"), ("mouth", "Mouth")):
            r = regions.get(region) or {}
            n[f"Attn{short}{name}Lift"] = f"{r['lift']:.2f}" if "lift" in r else NA
            n[f"Attn{short}{name}Mass"] = pct(r.get("mass_share"))
            if "area_share" in r:
                n[f"Attn{name}Area"] = pct(r["area_share"])
    n.setdefault("AttnEyesArea", NA)
    n.setdefault("AttnMouthArea", NA)
    n["AttnClips"] = str(_get(a, "static_to_dynamic", "clips") or _get(a, "dynamic_to_static", "clips") or NA)
    sd, ds = _get(a, "static_to_dynamic", "regions"), _get(a, "dynamic_to_static", "regions")
    if not sd and not ds:
        n["AttentionSentence"] = (
            "This run's fusion returned no cross-attention weights (or plot skipped them), so there is no "
            "attention check."
        )
        return n
    parts = []
    if sd:
        parts.append(
            f"The face tokens, querying the flow, put {pct(sd['mouth']['mass_share'])}\\% of their attention "
            f"on the mouth region, which covers {pct(sd['mouth']['area_share'])}\\% of the crop: they "
            f"{_lift_word(sd['mouth']['lift'])} the mouth (lift {sd['mouth']['lift']:.2f}) and "
            f"{_lift_word(sd['eyes']['lift'])} the eyes (lift {sd['eyes']['lift']:.2f})"
        )
    if ds:
        parts.append(
            f"the flow tokens, querying the faces, {_lift_word(ds['mouth']['lift'])} the mouth (lift "
            f"{ds['mouth']['lift']:.2f}) and {_lift_word(ds['eyes']['lift'])} the eyes (lift {ds['eyes']['lift']:.2f})"
        )
    text = "; ".join(parts) + "."
    n["AttentionSentence"] = text[0].upper() + text[1:]
    return n


def checks_sentence(run: Run) -> str:
    """One sentence on whether the stream permutation and the attention found what the generator planted."""
    streams = _get(run.importance, "streams") or {}
    sd = _get(run.attention, "static_to_dynamic", "regions", "mouth", "lift")
    parts = []
    if streams:
        verb = importance_method(run)[0]
        parts.append(
            f"{verb} each stream's input finds the network relying on the stream each trait was planted in"
            if follows_generator(streams)
            else f"{verb} each stream's input does not find the network relying on the streams the traits were "
            "planted in"
        )
    if sd is not None:
        parts.append(
            "the face tokens' attention over the flow prefers the mouth, where the speaking rate is planted"
            if sd >= 1.5
            else "the face tokens' attention over the flow shows no preference for the mouth, where the speaking "
            "rate is planted"
        )
    if not parts:
        return "Neither the stream permutation nor the attention check was run."
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def occlusion_numbers(run: Run) -> dict[str, str]:
    share = _get(run.importance, "occlusion", "region_share", "dynamic") or {}
    return {
        "OccFlowMouthExtraversion": pct(_get(share, "extraversion", "mouth")),
        "OccFlowEyesConscientiousness": pct(_get(share, "conscientiousness", "eyes")),
        "OccClips": str(_get(run.importance, "occlusion", "clips") or NA),
        "OccCells": str(_get(run.importance, "occlusion", "cells") or NA),
    }


def published_numbers(path: str | Path) -> dict[str, str]:
    """The constant baseline and the best verified model on the ChaLearn test split (all, and visual-only)."""
    rows = read_published(path)
    base = next((p.mean for p in rows if p.visual_only == "n/a" and p.mean is not None), None)
    models = [p for p in rows if p.visual_only != "n/a" and p.mean is not None]
    best = max(models, key=lambda p: p.mean, default=None)
    visual = max((p for p in models if p.visual_only == "yes"), key=lambda p: p.mean, default=None)
    return {
        "PubBaselineMAE": f4(base),
        "PubBestMAE": f4(best.mean if best else None),
        "PubBestCite": f"\\citep{{{best.citation}}}" if best else "",
        "PubBestMargin": f4(best.mean - base) if best and base is not None else NA,
        "PubVisualMAE": f4(visual.mean if visual else None),
        "PubVisualCite": f"\\citep{{{visual.citation}}}" if visual else "",
        "PubRows": str(len(models)),
        "PubVisualRows": str(sum(p.visual_only == "yes" for p in models)),
    }


def config_numbers(default: Mapping[str, Any], full: Mapping[str, Any]) -> dict[str, str]:
    n = {}
    for prefix, p in (("Def", default), ("Full", full)):
        n[f"{prefix}StaticBackbone"] = latex_escape(str(_get(p, "model", "static", "backbone")))
        n[f"{prefix}StaticFrames"] = str(_get(p, "model", "static", "frames"))
        n[f"{prefix}StaticSize"] = str(_get(p, "model", "static", "input_size"))
        n[f"{prefix}DynamicBackbone"] = latex_escape(str(_get(p, "model", "dynamic", "backbone")))
        n[f"{prefix}FlowSize"] = str(_get(p, "model", "dynamic", "input_size"))
        n[f"{prefix}FusionDim"] = str(_get(p, "model", "fusion", "dim"))
        n[f"{prefix}FusionHeads"] = str(_get(p, "model", "fusion", "heads"))
        n[f"{prefix}FusionLayers"] = str(_get(p, "model", "fusion", "layers"))
        n[f"{prefix}Epochs"] = str(_get(p, "train", "epochs"))
        n[f"{prefix}Batch"] = str(_get(p, "train", "batch_size"))
        n[f"{prefix}FaceSize"] = str(_get(p, "faces", "size"))
    return n


# ---------------------------------------------------------------- tables


def results_tabular(run: Run) -> str:
    s = run.scores
    rows = [
        ("This model", lambda t: _get(s, "test", t, "1-mae")),
        ("Baseline", lambda t: _get(s, "baseline", "test", t, "1-mae")),
        ("Oracle", lambda t: _get(s, "oracle", "test", t, "1-mae")),
        ("Ceiling", lambda t: _get(s, "ceiling", "test", t)),  # stage ceiling, where evaluate added it
    ]
    cols = [*TRAITS, "mean"]
    lines = [
        "\\begin{tabular}{l" + "r" * len(cols) + "}",
        "\\toprule",
        " & ".join(["", *[c[0].upper() if c != "mean" else "Mean" for c in cols]]) + " \\\\",
        "\\midrule",
    ]
    for name, get in rows:
        values = [get(c) for c in cols]
        if all(v is None for v in values):
            continue
        lines.append(" & ".join([name, *[f"{v:.3f}" if v is not None else "--" for v in values]]) + " \\\\")
    gaps = [_get(s, "gap_closed", "test", c) for c in cols]
    if any(g is not None for g in gaps):
        lines += [
            "\\midrule",
            " & ".join(["Gap closed (\\%)", *[pct(g) if g is not None else "--" for g in gaps]]) + " \\\\",
        ]
    r2 = [_get(s, "test", c, "r2") for c in cols]
    lines.append(
        " & ".join(["$R^2$ (this model)", *[f"{v:.2f}" if v is not None else "--" for v in r2]]) + " \\\\"
    )
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def published_tabular(run: Run, published: str | Path, source: str) -> str:
    """This run's headline rows beside every published figure (with its citation and modality)."""
    s = run.scores
    head = [
        f"\\begin{{tabular}}{{{RAGGED}{{0.29\\textwidth}}{RAGGED}{{0.17\\textwidth}}{RAGGED}{{0.18\\textwidth}}crr}}",
        "\\toprule",
        "Method & Data (split) & Modality & Visual only & 1-MAE & CCC \\\\",
        "\\midrule",
    ]
    data = f"{latex_escape(source)} test ({_get(s, 'test', 'n_clips') or NA} clips)"
    ccc = _get(s, "test", "mean", "ccc")
    rows = [
        f"This model, this run & {data} & faces and optical flow & yes & {f4(_get(s, 'test', 'mean', '1-mae'))} & "
        f"{f'{ccc:.3f}' if ccc is not None else '--'} \\\\",
        f"Training-mean baseline, this run & {data} & none & n/a & {f4(_get(s, 'baseline', 'test', 'mean', '1-mae'))} & -- \\\\",
    ]
    if _get(s, "oracle", "test"):
        oc = _get(s, "oracle", "test", "mean", "ccc")
        rows.append(
            f"Oracle (noise-free labels), this run & {data} & the true factors & n/a & "
            f"{f4(_get(s, 'oracle', 'test', 'mean', '1-mae'))} & {f'{oc:.3f}' if oc is not None else '--'} \\\\"
        )
    rows.append("\\midrule")
    for p in read_published(published):
        rows.append(
            f"{latex_escape(p.method)} \\citep{{{p.citation}}} & {latex_escape(p.split)} & "
            f"{latex_escape(p.modality)} & {p.visual_only} & {f4(p.mean) if p.mean is not None else '--'} & "
            f"{f'{p.ccc:.3f}' if p.ccc is not None else '--'} \\\\"
        )
    return "\n".join([*head, *rows, "\\bottomrule", "\\end{tabular}"]) + "\n"


def ablations_tabular(run: Run, full: str) -> str:
    variants = _get(run.ablations, "variants") or {}
    lines = [
        "\\begin{tabular}{lcrrrr}",
        "\\toprule",
        "Variant & Seeds & Mean 1-MAE & Gap closed (\\%) & $\\Delta$MAE vs full [95\\% CI] & Holm $p$ \\\\",
        "\\midrule",
    ]
    if not variants:
        lines.append("\\multicolumn{6}{l}{No ablation runs collected.} \\\\")
    order = [full, *sorted(n for n in variants if n != full)] if full in variants else sorted(variants)
    for name in order:
        v = variants[name]
        change = variant_change(run, full, name) if name != full else {}
        title = "full (cross-attention)" if name == full else label(name, change, short=True)
        gaps = [
            g.get("mean") for g in run.variants.get(name, {}).get("gaps", []) if g.get("mean") is not None
        ]
        gap = pct(sum(gaps) / len(gaps)) if gaps else "--"
        mae = f"{v['1-mae']['mean']:.4f}"
        if v.get("seeds", 1) > 1:
            mae += f" $\\pm$ {v['1-mae_sd_over_seeds']:.4f}"
        c = v.get("vs_full")
        diff = (
            f"{signed(c['mae_diff'])} [{signed(c['mae_diff_lo'])}, {signed(c['mae_diff_hi'])}]" if c else "--"
        )
        p = pvalue(c["p_holm"]) + ("$^*$" if c["significant"] else "") if c else "--"
        lines.append(f"{title} & {v.get('seeds', NA)} & {mae} & {gap} & {diff} & {p} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def configs_tabular(default: Mapping[str, Any], full: Mapping[str, Any]) -> str:
    def name(table: Mapping[str, str], key: Any) -> str:
        return table.get(str(key), latex_escape(str(key)))

    def describe(p: Mapping[str, Any]) -> list[str]:
        m, t, f = p["model"], p["train"], p["model"]["fusion"]
        steps = m["dynamic"]["frames"] or "all"
        pre = [
            x
            for x in (m["static"].get("pretrained", "none"), m["dynamic"].get("pretrained", "none"))
            if str(x).lower() not in ("none", "")
        ]
        return [
            {"synthetic": "synthetic", "chalearn": "FI V2"}.get(str(p["data"]["source"]), NA),
            f"{p['faces']['size']} px, margin {p['faces']['margin']:g}",
            f"{name(BACKBONES, m['static']['backbone'])}, {m['static']['frames']} frames, {m['static']['input_size']} px",
            f"{name(BACKBONES, m['dynamic']['backbone'])}, {steps} steps, {m['dynamic']['input_size']} px",
            f"{latex_escape(str(p['flow']['method']).capitalize())}, window {p['flow']['farneback_winsize']} px",
            f"{name(FUSIONS, f['type'])} ({name(DIRECTIONS, f['direction'])}), {f['layers']} "
            f"layer{'s' if f['layers'] != 1 else ''}, {f['heads']} heads, $d={f['dim']}$",
            "ImageNet, Kinetics-400" if pre else "none",
            f"{t['epochs']} epochs, batch {t['batch_size']}, lr {t['lr']:g}",
            "off" if not t.get("patience") else f"{t['patience']} epochs",
        ]

    rows = (
        "Data",
        "Face crop",
        "Static",
        "Dynamic",
        "Flow",
        "Fusion",
        "Pretrained",
        "Training",
        "Early stop",
    )
    d, fu = describe(default), describe(full)
    lines = [
        f"\\begin{{tabular}}{{@{{}}l{RAGGED}{{0.36\\columnwidth}}{RAGGED}{{0.36\\columnwidth}}@{{}}}}",
        "\\toprule",
        " & Default & Full \\\\",
        "\\midrule",
    ]
    lines += [f"{r} & {a} & {b} \\\\" for r, a, b in zip(rows, d, fu, strict=True)]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def figures_tex(figures_dir: str | Path, paper_dir: Path) -> str:
    """\\FigScores{width} and the others: the figure (PDF where plot drew one, else PNG), or a framed note."""
    lines = []
    for macro, stem in FIGURES.items():
        found = next(
            (
                Path(figures_dir) / f"{stem}{ext}"
                for ext in (".pdf", ".png")
                if (Path(figures_dir) / f"{stem}{ext}").is_file()
            ),
            None,
        )
        if found is None:
            body = f"\\fbox{{\\parbox{{#1}}{{\\centering This run drew no {latex_escape(stem)} figure.}}}}"
        else:
            rel = Path(os.path.relpath(found.resolve(), paper_dir.resolve())).as_posix()
            body = f"\\includegraphics[width=#1]{{{rel}}}"
        lines.append(f"\\newcommand{{\\{macro}}}[1]{{{body}}}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- writing and building


def macros_tex(numbers: Mapping[str, str]) -> str:
    lines = ["% Generated by python -m stages.paper from reports/ and params.yaml: do not edit."]
    for name, value in numbers.items():
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise ValueError(f"macro name {name!r}: letters only")
        lines.append(f"\\newcommand{{\\{name}}}{{{value}}}")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def generate(cfg: Any, params: Mapping[str, Any]) -> dict[str, str]:
    """Write paper/generated/ from the run's reports; return the macros."""
    run = read_run(cfg)
    full_params = merged(params, yaml.safe_load(Path(cfg.full_config).read_text(encoding="utf-8")) or {})
    full_variant = str(_get(params, "plot", "full_variant") or "full")
    numbers: dict[str, str] = {"PaperTitle": latex_escape(cfg.title)}
    numbers |= headline_numbers(run)
    numbers |= ceiling_numbers(run)
    numbers |= data_numbers(run, params)
    numbers |= config_numbers(params, full_params)
    numbers |= importance_numbers(run)
    numbers |= attention_numbers(run)
    numbers |= occlusion_numbers(run)
    numbers |= ablation_sentences(run, full_variant)
    numbers |= published_numbers(cfg.published)
    numbers |= {
        "GapTarget": pct(cfg.gap_target),
        "GapSentence": gap_sentence(run, cfg.gap_target),
        "SeedsSentence": seeds_sentence(run, full_variant),
        "UnseenSentence": unseen_sentence(run),
        "ProtocolSentence": protocol_sentence(run, str(_get(params, "data", "source"))),
        "AblationProtocolSentence": ablation_protocol_sentence(run, full_variant),
        "ChecksSentence": checks_sentence(run),
    }
    out = Path(cfg.generated_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = str(_get(params, "data", "source") or "this")
    files: dict[str, Callable[[], str]] = {
        "numbers.tex": lambda: macros_tex(numbers),
        "results.tex": lambda: results_tabular(run),
        "published.tex": lambda: published_tabular(run, cfg.published, source),
        "ablations.tex": lambda: ablations_tabular(run, full_variant),
        "configs.tex": lambda: configs_tabular(params, full_params),
        "figures.tex": lambda: figures_tex(cfg.figures_dir, Path(cfg.tex).parent),
    }
    for name, make in files.items():
        write_text(out / name, make())
    for stale in set(p.name for p in out.glob("*.tex")) - set(files):
        (out / stale).unlink()
    return numbers


def latex_tools() -> list[str]:
    return [tool for tool in ("latexmk", "pdflatex", "bibtex") if shutil.which(tool) is None]


def build_pdf(tex: str | Path, pdf: str | Path, timeout: int) -> Path:
    """latexmk -pdf in a scratch folder beside the source, then the PDF moved to `pdf` atomically."""
    missing = latex_tools()
    if missing:
        raise PaperError(
            f"{', '.join(missing)} not found: the paper stage needs TeX Live. On Debian or Ubuntu: {INSTALL_HINT}"
        )
    tex, pdf = Path(tex), Path(pdf)
    env = os.environ | {"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "FORCE_SOURCE_DATE": "1"}
    with tempfile.TemporaryDirectory(prefix=".build-", dir=tex.parent) as build:
        cmd = [
            "latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
            f"-outdir={Path(build).name}", tex.name,
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, cwd=tex.parent, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise PaperError(f"latexmk ran past {timeout} s (paper.latex_timeout)") from exc
        made = Path(build) / f"{tex.stem}.pdf"
        if proc.returncode != 0 or not made.is_file():
            logfile = Path(build) / f"{tex.stem}.log"
            tail = logfile.read_text(errors="replace")[-3000:] if logfile.is_file() else proc.stdout[-3000:]
            raise PaperError(f"latexmk failed on {tex} (exit {proc.returncode}):\n{tail}")
        with atomic_path(pdf) as tmp:
            shutil.copyfile(made, tmp)
    return pdf
