"""Paper-ready tables in Markdown and LaTeX: this run's scores beside published FI V2 figures.

Published figures live in one data file, `paper/published.csv` (the plot stage's param
`plot.published`; the paper stage reads the same file): a row only where the number and its source
were checked, each with its modality, whether it is visual-only, its split and a BibTeX key of
`paper/references.bib`. They were measured on the official ChaLearn test split, so they are
comparable to a run only when the run used that data (`data.source: chalearn`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from model.atomic import atomic_path
from model.records import TRAITS

PUBLISHED_CSV = Path("paper/published.csv")
PUBLISHED_COLUMNS = (
    "method", "modality", "visual_only", "split", "one_minus_mae", "ccc", *TRAITS, "citation", "source",
)  # fmt: skip
VISUAL_ONLY = ("yes", "no", "n/a")


@dataclass(frozen=True)
class Published:
    """A published figure on the ChaLearn test split: mean 1-MAE and/or CCC, per-trait 1-MAE where the
    source gives them, and where it comes from."""

    method: str
    modality: str
    visual_only: str  # yes | no | n/a (not a model)
    split: str
    citation: str  # a BibTeX key of paper/references.bib
    source: str  # where the figure was read and how it was checked
    mean: float | None = None  # 1-MAE
    ccc: float | None = None
    traits: dict[str, float] = field(default_factory=dict)


def _number(row: Mapping[str, str], key: str, path: Path, line: int) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}, row {line}: {key} {text!r} is not a number") from None


def read_published(path: str | Path = PUBLISHED_CSV) -> tuple[Published, ...]:
    """The rows of the published-figures file (lines starting with # are comments)."""
    path = Path(path)
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    missing = set(PUBLISHED_COLUMNS) - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    rows = []
    for i, row in enumerate(reader, start=1):
        visual = row["visual_only"].strip()
        if visual not in VISUAL_ONLY:
            raise ValueError(f"{path}, row {i}: visual_only {visual!r} is not one of {list(VISUAL_ONLY)}")
        traits = {t: v for t in TRAITS if (v := _number(row, t, path, i)) is not None}
        rows.append(
            Published(
                method=row["method"].strip(),
                modality=row["modality"].strip(),
                visual_only=visual,
                split=row["split"].strip(),
                citation=row["citation"].strip(),
                source=row["source"].strip(),
                mean=_number(row, "one_minus_mae", path, i),
                ccc=_number(row, "ccc", path, i),
                traits=traits,
            )
        )
    return tuple(rows)


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


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def published_table(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published figures: method, modality, visual-only, split, 1-MAE per trait and mean, CCC, source."""
    rows = []
    for p in read_published(path):
        rows.append(
            {
                "method": p.method,
                "modality": p.modality,
                "visual only": p.visual_only,
                "split": p.split,
                **{_short(t): _cell(p.traits.get(t)) for t in TRAITS},
                "mean": _cell(p.mean),
                "CCC": _cell(p.ccc),
                "source": f"[{p.citation}] {p.source}",
            }
        )
    return pd.DataFrame(rows)


def comparison_table(
    metrics: Mapping[str, Any], split: str, source: str, published: str | Path = PUBLISHED_CSV
) -> pd.DataFrame:
    """This run's 1-MAE rows above the published ones, with the data each was measured on, its modality
    and whether it is visual-only (this model sees faces and their motion: visual only)."""
    run = results_table(metrics, split).assign(
        modality="visual (faces and optical flow)", **{"visual only": "yes"}, data=f"{source} ({split})"
    )
    run.loc[run["method"] != "This model", ["modality", "visual only"]] = ["–", "n/a"]
    ccc = metrics.get(split, {}).get("mean", {}).get("ccc")
    run["CCC"] = ["–"] * len(run)
    if ccc is not None and len(run):
        run.loc[0, "CCC"] = f"{ccc:.4f}"
    published = (
        published_table(published)
        .drop(columns="source")
        .rename(columns={"split": "data"})
        .assign(data=lambda f: f["data"] + " (published)")
    )
    return pd.concat([run, published], ignore_index=True)[
        ["method", "modality", "visual only", *[_short(t) for t in TRAITS], "mean", "CCC", "data"]
    ]


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
