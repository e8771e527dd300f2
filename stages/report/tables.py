"""Paper-ready tables in Markdown and LaTeX: this run's scores beside published FI V2 figures.

Published figures are listed only where the number and its source are certain; each carries its
citation. They were measured on the official FI V2 test split (ChaLearn LAP 2016 test set), so
they are comparable to a run only when the run used that data (`data.source: chalearn`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from model.atomic import atomic_path
from model.records import TRAITS


@dataclass(frozen=True)
class Published:
    """A published 1-MAE on the FI V2 test split; per-trait figures where the source gives them."""

    method: str
    citation: str
    mean: float
    traits: dict[str, float] = field(default_factory=dict)


PUBLISHED: tuple[Published, ...] = (
    Published(
        method="Training-set mean (every clip)",
        citation="Measured on the official FI V2 labels (../shared/data/README.md)",
        mean=0.8814,
        traits={
            "openness": 0.8833,
            "conscientiousness": 0.8746,
            "extraversion": 0.8781,
            "agreeableness": 0.8935,
            "neuroticism": 0.8773,
        },
    ),
    Published(
        method="NJU-LAMDA, Deep Bimodal Regression (challenge winner)",
        citation="Zhang, Wei, Wu, Cai, Lin, Zhou. Deep Bimodal Regression for Apparent Personality "
        "Analysis. ECCV 2016 Workshops, LNCS 9915; result as reported in Ponce-López et al., "
        "ChaLearn LAP 2016: First Round Challenge on First Impressions, ECCV 2016 Workshops",
        mean=0.9130,
    ),
)


def ci_cell(entry: Mapping[str, Any], metric: str, digits: int = 4) -> str:
    """'0.9012 [0.8950, 0.9070]' from a scores.json entry; '–' where absent."""
    v = entry.get(metric)
    if v is None:
        return "–"
    lo, hi = entry.get(f"{metric}_lo"), entry.get(f"{metric}_hi")
    if lo is None or hi is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _short(trait: str) -> str:
    return f"{trait.capitalize()} ({trait[0].upper()})"


def results_table(metrics: Mapping[str, Any], split: str, metric: str = "1-mae") -> pd.DataFrame:
    """One row per scored predictor of this run (model, mean baseline, oracle): per trait and mean, with CIs."""
    rows = []
    for label, section in (
        ("This model", metrics.get(split)),
        ("Mean baseline (this run)", metrics.get("baseline", {}).get(split)),
        ("Oracle (true factors)", metrics.get("oracle", {}).get(split)),
    ):
        if section:
            rows.append(
                {
                    "method": label,
                    **{_short(t): ci_cell(section.get(t, {}), metric) for t in TRAITS},
                    "mean": ci_cell(section.get("mean", {}), metric),
                }
            )
    return pd.DataFrame(rows)


def published_table(include: bool = True) -> pd.DataFrame:
    """The published FI V2 test figures (1-MAE), blank where a source gives no per-trait figure."""
    rows = []
    for p in PUBLISHED if include else ():
        rows.append(
            {
                "method": p.method,
                **{_short(t): f"{p.traits[t]:.4f}" if t in p.traits else "–" for t in TRAITS},
                "mean": f"{p.mean:.4f}",
                "source": p.citation,
            }
        )
    return pd.DataFrame(rows)


def comparison_table(metrics: Mapping[str, Any], split: str, source: str) -> pd.DataFrame:
    """This run's 1-MAE rows above the published ones, with a column saying on which data each was measured."""
    run = results_table(metrics, split).assign(data=f"{source} ({split})")
    published = published_table().drop(columns="source").assign(data="FI V2 test (published)")
    return pd.concat([run, published], ignore_index=True)


def write_table(frame: pd.DataFrame, out_dir: str | Path, name: str, caption: str) -> list[Path]:
    """<name>.md (pipe table with the caption above) and <name>.tex (booktabs table), atomically."""
    out_dir = Path(out_dir)
    md_path, tex_path = out_dir / f"{name}.md", out_dir / f"{name}.tex"
    with atomic_path(md_path) as tmp:
        tmp.write_text(
            f"{caption}\n\n{frame.to_markdown(index=False, disable_numparse=True)}\n", encoding="utf-8"
        )
    latex = frame.to_latex(
        index=False,
        caption=latex_escape(caption),
        label=f"tab:{name}",
        escape=True,
        na_rep="–",
        column_format="l" + "r" * (frame.shape[1] - 1),
    )
    with atomic_path(tex_path) as tmp:
        tmp.write_text(latex, encoding="utf-8")
    return [md_path, tex_path]


LATEX_SPECIAL = {c: f"\\{c}" for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in free text (captions)."""
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)
