"""Pareto plots of a study: measured quality vs effective bits, saved as PNG and HTML.

A point ``p`` is on the Pareto front of a set when no other point ``q`` has
``q.avg_bits <= p.avg_bits`` and ``q.y <= p.y`` with one of them strict (both minimised).
Points are grouped by the sweep axis that varies (estimator or solver) and every group's
front is drawn as a step line, so a comparison study shows one front per method.

The HTML file is self-contained (the figure as inline SVG plus a table of the trials); it
needs no plotting library in the browser and no network.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..search._io import atomic_write, atomic_write_text
from .study import CONFIG_ATTR, StudyConfig
from .sweeps import series_axis

if TYPE_CHECKING:
    import optuna

METRICS = ("kl", "ppl")
COLUMNS = ("number", "series", "avg_bits", "bytes", "kl", "ppl", "predicted", "pareto")

log = logging.getLogger(__name__)


def trial_rows(study: optuna.Study, y: str = "ppl") -> list[dict[str, Any]]:
    """One row per COMPLETE trial with its series label and Pareto flag (within its series)."""
    from optuna.trial import TrialState

    if y not in METRICS:
        raise ValueError(f"`y` must be one of {METRICS}, got {y!r}")
    config = StudyConfig.from_dict(study.user_attrs.get(CONFIG_ATTR, {}))
    axis = series_axis(config)
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        missing = [k for k in ("avg_bits", "bytes", "kl", "ppl") if k not in a]
        if missing:  # not written by a bitalloc worker, or the storage was damaged
            log.warning("trial %d has no %s; left out", t.number, ", ".join(missing))
            continue
        rows.append(
            {
                "number": t.number,
                "series": str(t.params.get(axis)) if axis else "plans",
                "avg_bits": float(a["avg_bits"]),
                "bytes": int(a["bytes"]),
                "kl": float(a["kl"]),
                "ppl": float(a["ppl"]),
                "predicted": a.get("predicted"),
                "feasible": float(a.get("over_budget", 0.0)) <= 0.0,
            }
        )
    for series in {r["series"] for r in rows}:
        group = [r for r in rows if r["series"] == series]
        front = pareto_front([(r["avg_bits"], r[y]) for r in group])
        for i, r in enumerate(group):
            r["pareto"] = i in front
    return sorted(rows, key=lambda r: (r["series"], r["avg_bits"], r["number"]))


def pareto_front(points: Sequence[tuple[float, float]]) -> set[int]:
    """Indices of the non-dominated points (both coordinates minimised; duplicates kept)."""
    from ..search.frontier import pareto_indices

    return set(pareto_indices(points, keep_duplicates=True))


def pareto_figure(rows: list[dict[str, Any]], y: str = "ppl", title: str = "") -> Any:
    """A matplotlib figure: every trial as a dot, each series' front as a step line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for series in sorted({r["series"] for r in rows}):
        group = [r for r in rows if r["series"] == series]
        (dots,) = ax.plot(
            [r["avg_bits"] for r in group], [r[y] for r in group], "o", alpha=0.35, ms=4
        )
        front = sorted((r["avg_bits"], r[y]) for r in group if r["pareto"])
        ax.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            marker="o",
            color=dots.get_color(),
            label=f"{series} (front)",
        )
    values = [r[y] for r in rows if r[y] > 0]
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("effective bits per weight")
    ax.set_ylabel({"ppl": "perplexity", "kl": "KL(reference || plan) per token"}[y])
    ax.set_title(title or "Pareto front")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_pareto_plots(
    study: optuna.Study, prefix: str | os.PathLike[str], *, y: str = "ppl"
) -> tuple[Path, Path]:
    """Write ``<prefix>.png`` and ``<prefix>.html`` (atomically); returns both paths."""
    import matplotlib.pyplot as plt

    rows = trial_rows(study, y)
    if not rows:
        raise ValueError(f"study {study.study_name!r} has no completed trial to plot")
    fig = pareto_figure(rows, y, title=f"{study.study_name}: {y} vs bits")
    base = Path(prefix)
    png = atomic_write(base.with_name(base.name + ".png"), lambda p: fig.savefig(p, format="png"))
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    plt.close(fig)
    page = _html(study.study_name, svg.getvalue(), rows)
    return png, atomic_write_text(base.with_name(base.name + ".html"), page)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return html.escape("" if value is None else str(value))


def _html(name: str, svg: str, rows: list[dict[str, Any]]) -> str:
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and doctype
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "\n".join(
        "<tr"
        + (' class="front"' if r["pareto"] else "")
        + ">"
        + "".join(f"<td>{_cell(r[c])}</td>" for c in COLUMNS)
        + "</tr>"
        for r in rows
    )
    title = html.escape(name)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}: Pareto front</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "tr.front{font-weight:bold;background:#eef}</style></head><body>"
        f"<h1>Study {title}</h1>\n{svg}\n<h2>Completed trials (bold: Pareto front)</h2>"
        f"<table><tr>{head}</tr>\n{body}\n</table></body></html>\n"
    )
