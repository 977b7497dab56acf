"""The report page: a :class:`ReportModel` -> plotly figures (:func:`figures`) and the
HTML of the template in ``dashboards/`` (:func:`render_html`)."""

from __future__ import annotations

import json
import math
from typing import Any

from autoft.report.model import Dimension, ReportModel, fmt
from autoft.report.records import ABSENT
from autoft.resources import shared_dir

DASHBOARDS_DIR = shared_dir("dashboards")
STATUS_COLORS = {"completed": "#2b6cb0", "pruned": "#dd6b20", "failed": "#c53030",
                 "killed": "#718096", "running": "#38a169"}
BEST_COLOR = "#6b46c1"


def _layout(**kw: Any) -> dict[str, Any]:
    base = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), height=360,
                font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12),
                legend=dict(orientation="h", y=-0.2))
    base.update(kw)
    return base


def figures(m: ReportModel) -> dict[str, Any]:
    """plotly figures (as JSON-able dicts) by section; None where there is nothing to draw."""
    import plotly.graph_objects as go

    out: dict[str, Any] = {}
    metric = m.metric
    # best so far, by trial number
    if m.by_trial:
        fig = go.Figure()
        for status in STATUS_COLORS:
            pts = [p for p in m.by_trial if p[3] == status]
            if pts:
                fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", name=status,
                                marker=dict(color=STATUS_COLORS[status], size=9,
                                            symbol="x" if status == "pruned" else "circle"),
                                hovertemplate="t%{x}: %{y:.4g}<extra>" + status + "</extra>")
        fig.add_scatter(x=[p[0] for p in m.by_trial], y=[p[2] for p in m.by_trial], mode="lines",
                        line=dict(shape="hv", color="#1a202c", width=2), name="best so far",
                        hovertemplate="after t%{x}: best %{y:.4g}<extra></extra>")
        fig.update_layout(**_layout(xaxis_title="trial number", yaxis_title=metric,
                                    title=dict(text="Best so far, by trial", x=0.01)))
        fig.update_xaxes(dtick=1 if len(m.by_trial) <= 20 else None)
        out["by-trial"] = fig
    # best so far, by compute
    ev = [e for e in m.by_compute if e.best is not None]
    if ev:
        xs_s, xs_n = [e.cum_seconds for e in ev], [e.cum_samples for e in ev]
        fig = go.Figure()
        scored = [e for e in ev if e.value is not None]
        fig.add_scatter(x=[e.cum_seconds for e in scored], y=[e.value for e in scored], mode="markers",
                        name="an epoch's value", marker=dict(color="#a0aec0", size=6),
                        text=[f"t{e.number:02d} epoch {e.epoch}" for e in scored],
                        hovertemplate="%{text}: %{y:.4g}<extra></extra>")
        fig.add_scatter(x=xs_s, y=[e.best for e in ev], mode="lines", line=dict(shape="hv", color="#1a202c", width=2),
                        name="best so far", hovertemplate="%{x:.3g}: best %{y:.4g}<extra></extra>")
        fig.update_layout(**_layout(
            xaxis_title="training seconds, all trials (sum of epoch_seconds)", yaxis_title=metric,
            title=dict(text="Best so far, by training compute", x=0.01),
            updatemenus=[dict(type="buttons", direction="left", x=1, xanchor="right", y=-0.2, yanchor="top",
                              showactive=True, buttons=[
                dict(label="seconds", method="update",
                     args=[{"x": [[e.cum_seconds for e in scored], xs_s]},
                           {"xaxis.title.text": "training seconds, all trials (sum of epoch_seconds)"}]),
                dict(label="samples", method="update",
                     args=[{"x": [[e.cum_samples for e in scored], xs_n]},
                           {"xaxis.title.text": "training samples, all trials (sum of train_samples)"}]),
            ])]))
        out["by-compute"] = fig
    # learning curves
    if m.curves:
        fig = go.Figure()
        shown: set[str] = set()
        for c in sorted(m.curves, key=lambda c: c.is_best):
            color = STATUS_COLORS.get(c.status, "#718096")
            fig.add_scatter(x=c.epochs, y=c.values, mode="lines+markers", legendgroup=c.status,
                            name="best: " + c.label if c.is_best else c.status,
                            showlegend=c.is_best or c.status not in shown,
                            line=dict(color=BEST_COLOR if c.is_best else color, width=4 if c.is_best else 1.5,
                                      dash="solid" if c.is_best or c.status in ("completed", "running") else "dot"),
                            marker=dict(size=5), opacity=1 if c.is_best else 0.75,
                            hovertemplate=f"{c.label} ({c.status}) epoch %{{x}}: %{{y:.4g}}<extra></extra>")
            if not c.is_best:
                shown.add(c.status)
        for status, symbol, label in (("pruned", "x", "pruned here"), ("failed", "triangle-down", "failed after"),
                                      ("killed", "triangle-down", "killed after")):
            ends = [c for c in m.curves if c.status == status]
            if ends:
                fig.add_scatter(x=[c.epochs[-1] for c in ends], y=[c.values[-1] for c in ends], mode="markers",
                                name=label, marker=dict(symbol=symbol, size=13, color=STATUS_COLORS[status],
                                                        line=dict(width=2, color=STATUS_COLORS[status])),
                                text=[c.label for c in ends],
                                hovertemplate="%{text} " + status + " at epoch %{x}: %{y:.4g}<extra></extra>")
        fig.update_layout(**_layout(xaxis_title="epoch", yaxis_title=metric, height=420,
                                    title=dict(text=f"Learning curves: {metric} per epoch, every trial", x=0.01)))
        fig.update_xaxes(dtick=1)
        out["curves"] = fig
    # importances
    if m.importances:
        items = sorted(m.importances.items(), key=lambda kv: kv[1])
        fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                               marker_color="#2b6cb0", text=[f"{v:.2f}" for _, v in items], textposition="auto",
                               hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
        fig.update_layout(**_layout(xaxis_title=f"importance for {metric} (sums to 1)",
                                    height=max(220, 60 + 40 * len(items)), margin=dict(l=140, r=20, t=40, b=50),
                                    title=dict(text="Hyperparameter importances", x=0.01)))
        out["importances"] = fig
    # parallel coordinates
    if m.dimension_rows and m.dimensions:
        dims = [_parcoords_dim(d) for d in m.dimensions]
        values = [r.value for r in m.dimension_rows]
        dims.append(_parcoords_dim(Dimension(metric, "float", values)))
        fig = go.Figure(go.Parcoords(
            dimensions=dims, line=dict(color=values, colorscale="Viridis", reversescale=(m.mode == "min"),
                                       showscale=True, colorbar=dict(title=dict(text=metric)))))
        fig.update_layout(**_layout(height=420, margin=dict(l=80, r=80, t=60, b=30)))
        out["parallel"] = fig
    # freezing
    if m.freezing:
        from plotly.subplots import make_subplots

        k = len(m.freezing)
        fig = make_subplots(rows=1, cols=k, shared_yaxes=True, horizontal_spacing=0.04,
                            subplot_titles=[f"{g.label}: {metric} {fmt(g.value)}" for g in m.freezing])
        for i, g in enumerate(m.freezing, 1):
            text = [[f"{g.label} epoch {ep}: {name} "
                     + {1: "trains", 0: "frozen", None: "not run"}[cell]
                     + (f" (logged blocks_training {fmt(int(g.logged_blocks[j]))})"
                        if g.logged_blocks[j] is not None else "")
                     for j, (ep, cell) in enumerate(zip(g.epochs, row))] for name, row in zip(g.rows, g.cells)]
            fig.add_trace(go.Heatmap(
                z=g.cells, x=[f"epoch {e}" for e in g.epochs], y=g.rows, zmin=0, zmax=1, xgap=2, ygap=2,
                colorscale=[[0, "#e2e8f0"], [0.5, "#e2e8f0"], [0.5, "#2c7a7b"], [1, "#2c7a7b"]],
                showscale=(i == 1), colorbar=dict(tickvals=[0.25, 0.75], ticktext=["frozen", "trains"], len=0.6),
                text=text, hovertemplate="%{text}<extra></extra>"), row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(**_layout(height=max(260, 90 + 28 * len(m.freezing[0].rows)),
                                    plot_bgcolor="#ffffff", margin=dict(l=90, r=20, t=60, b=40)))
        out["freezing"] = fig
    return {k: json.loads(v.to_json()) for k, v in out.items()}


def _parcoords_dim(d: Dimension) -> dict[str, Any]:
    present = [v for v in d.values if v != ABSENT]
    has_absent = len(present) < len(d.values)
    if d.kind == "choice":
        cats = sorted({str(v) for v in present}, key=str) + ([ABSENT] if has_absent else [])
        idx = {c: i for i, c in enumerate(cats)}
        return dict(label=d.name, values=[idx[str(v)] if v != ABSENT else idx[ABSENT] for v in d.values],
                    tickvals=list(range(len(cats))), ticktext=cats, range=[-0.3, max(len(cats) - 0.7, 0.3)])
    log = d.kind == "log"
    tx = [math.log10(v) if log else float(v) for v in present]
    lo, hi = min(tx), max(tx)
    if hi > lo:
        rlo, rhi = lo, hi
    else:  # one value: a band around it
        half = (abs(hi) * 0.1) or 0.5
        rlo, rhi = lo - half, hi + half
    if d.kind == "int" and len(set(tx)) <= 8:
        ticks = sorted(set(tx))
    elif log and hi > lo:
        ticks = [lo, (lo + hi) / 2, hi]
    else:
        ticks = [lo, hi] if hi > lo else [lo]
    tickvals = list(ticks)
    ticktext = [fmt(10 ** t if log else (int(round(t)) if d.kind == "int" else t)) for t in ticks]
    sentinel = rlo - 0.15 * (rhi - rlo)
    if has_absent:
        tickvals.insert(0, sentinel)
        ticktext.insert(0, ABSENT)
    vals = [sentinel if v == ABSENT else (math.log10(v) if log else float(v)) for v in d.values]
    label = d.name + (" (log)" if log else "")
    return dict(label=label, values=vals, tickvals=tickvals, ticktext=ticktext,
                range=[sentinel if has_absent else rlo, rhi])


def _asset(name: str) -> str:
    return (DASHBOARDS_DIR / name).read_text(encoding="utf-8")


def plotly_js() -> str:
    """plotly.js, the same bundle ``include_plotlyjs=True`` inlines."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def render_html(m: ReportModel, *, inline_plotly: bool = True, refresh_s: int | None = None,
                plotly_src: str = "/plotly.min.js") -> str:
    """The page. ``inline_plotly``: plotly.js inside the file (opens offline, anywhere);
    otherwise loaded from ``plotly_src`` (the live view serves it once, cached)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(DASHBOARDS_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    figs = figures(m)
    specs = {k: json.dumps(v, separators=(",", ":")).replace("</", "<\\/") for k, v in figs.items()}
    status_counts = ", ".join(f"{n} {s}" for s, n in m.counts.items() if n)
    return env.get_template("report.html.j2").render(
        m=m, figs=specs, fmt=fmt, css=jinja2_markup(_asset("report.css")), js=jinja2_markup(_asset("report.js")),
        plotly=jinja2_markup(plotly_js().replace("</script", "<\\/script")) if inline_plotly else None,
        plotly_src=plotly_src, refresh_s=refresh_s, status_counts=status_counts, colors=STATUS_COLORS,
        sort_value=_sort_value, ABSENT=ABSENT,
    )


def jinja2_markup(s: str) -> Any:
    import markupsafe

    return markupsafe.Markup(s)


def _sort_value(v: Any) -> str:
    """A cell's key for the table sort: numbers as numbers, n/a and - last."""
    if v is None or v == ABSENT:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(float(v))
    return str(v)
