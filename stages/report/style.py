"""The house style of every figure: journal widths, fonts, colours, colour bars and one writer.

Every figure is drawn at its printed size, one journal column (SINGLE, 3.5 in) or the page
(DOUBLE, 7 in) wide, with constrained layout and no bbox cropping, so a figure keeps its width
and its 7-8 pt text keeps its size when placed at 100% in a paper. PNGs are written at the
`plot.dpi` (300 by default); figures made of vector content only (lines, bars, points) are also
written as PDF, with embedded TrueType fonts. Colours are the Okabe-Ito palette (readable under
every common colour-vision deficiency); traits are always in the order O, C, E, A, N.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colorbar import Colorbar
from matplotlib.figure import Figure
from matplotlib.text import Text

from model.atomic import atomic_path
from model.records import TRAITS

log = logging.getLogger(__name__)

SINGLE = 3.5  # inches: one journal column
DOUBLE = 7.0  # inches: the page width
WIDTHS = (SINGLE, DOUBLE)
MIN_FONT_PT = 7.0
DPI = 300

# Okabe & Ito (2008): distinguishable under every common colour-vision deficiency.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
TRAIT_COLOURS = dict(zip(TRAITS, PALETTE, strict=False))
ROLE_COLOURS = {"model": PALETTE[0], "baseline": "#999999", "oracle": PALETTE[2]}
HEAT_CMAP = "magma"  # heat maps laid over faces
SCORE_CMAP = "viridis"  # points coloured by a score

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "standard",  # never crop: the figure keeps the width it was drawn at
    "savefig.pad_inches": 0.02,
    "figure.constrained_layout.use": True,
    "figure.constrained_layout.h_pad": 0.03,
    "figure.constrained_layout.w_pad": 0.03,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: the same glyphs on every host
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "figure.titlesize": 8,
    "figure.labelsize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.titlepad": 3.0,
    "axes.labelpad": 2.0,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.4,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.0,
    "patch.linewidth": 0.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.major.pad": 1.5,
    "ytick.major.pad": 1.5,
    "errorbar.capsize": 2.0,
    "legend.frameon": False,
    "legend.handlelength": 1.5,
    "legend.borderaxespad": 0.2,
    "legend.columnspacing": 1.0,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "image.cmap": "viridis",
    "image.interpolation": "antialiased",
    "pdf.fonttype": 42,  # embed TrueType, as publishers ask
}


def apply_style(dpi: int | None = None) -> None:
    """Set the house rcParams (call once per process before drawing); `dpi` is the PNG resolution."""
    plt.rcParams.update(STYLE)
    if dpi:
        plt.rcParams["savefig.dpi"] = dpi


def trait_label(trait: str) -> str:
    """'openness' -> 'Openness (O)'."""
    return f"{trait.capitalize()} ({trait[0].upper()})"


def subplots(
    width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs: Any
) -> tuple[Figure, Any]:
    """A figure `width` (SINGLE or DOUBLE) by `height` inches with constrained layout; axes as plt.subplots."""
    if width not in WIDTHS:
        raise ValueError(f"figure width {width} in: the house widths are {WIDTHS}")
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width, height), **kwargs)


def colorbar(fig: Figure, mappable: Any, ax: Axes | Any, label: str, **kwargs: Any) -> Colorbar:
    """A labelled colour bar beside `ax` (one axes or several), thin and in the house fonts."""
    kwargs.setdefault("fraction", 0.05)
    kwargs.setdefault("pad", 0.02)
    kwargs.setdefault("aspect", 15)
    bar = fig.colorbar(mappable, ax=ax, **kwargs)
    bar.set_label(label)
    bar.outline.set_linewidth(0.5)
    bar.ax.tick_params(width=0.5, length=2)
    return bar


def image_panel(ax: Axes) -> None:
    """No ticks, grid or spines (an image panel), but keep room for axis labels."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def has_raster(fig: Figure) -> bool:
    """Whether any axes draws an image (faces, flow, heat maps): such figures are written as PNG only."""
    return any(ax.images for ax in fig.axes)


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write `fig` as <out_dir>/<name>.png, and .pdf when its content is all vector (atomically); close it.

    Returns the paths written, the PNG first.
    """
    formats = ("png",) if has_raster(fig) else ("png", "pdf")
    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"{name}.{fmt}"
        # no creation date in the PDF, so the same figure gives the same bytes on every run
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, metadata=metadata)
        paths.append(path)
    stale = Path(out_dir) / f"{name}.pdf"
    if "pdf" not in formats and stale.exists():  # an earlier run's PDF of what is now a raster figure
        stale.unlink()
    plt.close(fig)
    log.info("figure %s (%s)", paths[0].with_suffix(""), ", ".join(formats))
    return paths


def text_sizes(fig: Figure) -> list[tuple[float, str]]:
    """(size in points, text) of every visible, non-empty text artist of the figure (for checks)."""
    fig.canvas.draw()  # ticks and offsets exist only once drawn
    out = []
    for artist in fig.findobj(Text):
        if artist.get_visible() and artist.get_text().strip():
            out.append((float(artist.get_fontsize()), artist.get_text()))
    return out
