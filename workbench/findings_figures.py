"""The Findings page's figures (plotly), drawn from the tables of ``workbench.findings``; no Streamlit here."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures import PALETTE, text_heatmap

LAYOUT = dict(margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.25))


def frontier_figure(points: pd.DataFrame, runs: pd.DataFrame | None = None) -> go.Figure:
    """Accuracy (+- std across distillation seeds) against stored floats on a log axis, one line per kind;
    ``runs`` (from :func:`run_points`) as labelled markers, their bars the std across evaluation networks."""
    fig = go.Figure()
    for i, (line, part) in enumerate(points.groupby("line", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=part["floats"],
                y=part["mean"],
                error_y=dict(type="data", array=part["std_seeds"].fillna(0)),
                mode="lines+markers",
                name=line,
                text=part["arm"],
                line=dict(color=PALETTE[i % len(PALETTE)]),
                hovertemplate="%{text}<br>%{x:,} floats<br>%{y:.2f}%<extra></extra>",
            )
        )
    if runs is not None and not runs.empty:
        fig.add_trace(
            go.Scatter(
                x=runs["floats"],
                y=runs["mean"],
                error_y=dict(type="data", array=runs["std"]),
                mode="markers+text",
                text=runs["run"],
                textposition="top center",
                name="your runs",
                marker=dict(symbol="x", size=11, color="black"),
                hovertemplate="%{text}<br>%{x:,} floats<br>%{y:.2f}%<extra></extra>",
            )
        )
    fig.update_layout(height=460, xaxis_title="stored floats", yaxis_title="ConvNet test accuracy (%)", **LAYOUT)
    fig.update_xaxes(type="log")
    return fig


def heatmap_figure(matrix: pd.DataFrame, diverging: bool = False, title: str = "acc %") -> go.Figure:
    """A rows x networks heatmap with the numbers written in (``diverging``: centred on 0, for gains)."""
    text = [["" if math.isnan(v) else f"{v:+.1f}" if diverging else f"{v:.1f}" for v in row] for row in matrix.values]
    fig = go.Figure(text_heatmap(matrix, text, title, diverging))
    fig.update_layout(height=max(200, 60 + 45 * len(matrix.index)), yaxis=dict(autorange="reversed"), **LAYOUT)
    return fig


def constraint_figure(bars: pd.DataFrame, chosen: dict | None = None) -> go.Figure:
    """One panel per factor: mean accuracy per value with std-across-seeds bars; the chosen row as a line. The
    y axis spans the results, not from 0."""
    factors = list(dict.fromkeys(bars["factor"])) or [""]
    fig = make_subplots(rows=1, cols=len(factors), subplot_titles=factors, shared_yaxes=True)
    for i, factor in enumerate(factors):
        part = bars[bars["factor"] == factor]
        fig.add_trace(
            go.Bar(
                x=part["value"],
                y=part["mean"],
                error_y=dict(type="data", array=part["std_seeds"].fillna(0)),
                marker_color=PALETTE[i % len(PALETTE)],
                name=factor,
                showlegend=False,
                hovertemplate="%{x}: %{y:.2f}%<extra></extra>",
            ),
            1,
            i + 1,
        )
        if chosen:
            fig.add_hline(y=chosen["mean"], line_dash="dash", line_color="gray", row=1, col=i + 1)
    if chosen:
        label = f"chosen: {chosen['mean']:.2f} ± {chosen.get('std_seeds') or 0:.2f}"
        fig.add_annotation(text=label, xref="paper", yref="y", x=0, y=chosen["mean"], showarrow=False, yshift=10)
    # the axis spans the results (and the chosen row), not 0-100: the factors move accuracy by points, not tens
    stds = bars["std_seeds"].fillna(0)
    lows, highs = list(bars["mean"] - stds), list(bars["mean"] + stds)
    if chosen:
        lows.append(chosen["mean"] - (chosen.get("std_seeds") or 0))
        highs.append(chosen["mean"] + (chosen.get("std_seeds") or 0))
    if lows:
        pad = 0.15 * (max(highs) - min(lows)) + 0.5
        fig.update_yaxes(range=[min(lows) - pad, max(highs) + pad])
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="ConvNet test accuracy (%)", col=1)
    fig.update_layout(height=380, **LAYOUT)
    return fig


def diversity_figure(points: pd.DataFrame, metric: str, real: list[tuple[int, float]] = ()) -> go.Figure:
    """``metric`` against accuracy, one colour per kind; dotted lines at the metric's value on real images."""
    fig = go.Figure()
    for i, (kind, part) in enumerate(points.groupby("kind", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=part["metric"],
                y=part["accuracy"],
                mode="markers",
                name=str(kind),
                text=[f"{a} seed {s}" for a, s in zip(part["arm"], part["seed"], strict=True)],
                marker=dict(size=10, color=PALETTE[i % len(PALETTE)]),
                hovertemplate="%{text}<br>" + metric + " %{x:.4g}<br>%{y:.2f}%<extra></extra>",
            )
        )
    for n, v in real:
        fig.add_vline(x=v, line_dash="dot", line_color="gray", annotation_text=f"real, {n}/class")
    fig.update_layout(height=420, xaxis_title=metric, yaxis_title="ConvNet test accuracy (%)", **LAYOUT)
    return fig


def steps_figure(steps: pd.DataFrame, metric: str) -> go.Figure:
    fig = go.Figure()
    for i, (arm, part) in enumerate(steps.groupby("arm", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=part["step"],
                y=part["value"],
                mode="lines+markers",
                name=str(arm),
                line_color=PALETTE[i % len(PALETTE)],
            )
        )
    fig.update_layout(height=360, xaxis_title="distillation step", yaxis_title=metric, **LAYOUT)
    return fig
