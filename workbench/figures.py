"""Plotly figures and tables: loss curves, run overlays, accuracy matrices, accuracy against storage, ablations."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from haba_core.protocol import protocol_id, protocol_label
from workbench.runs import loss_names

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing); weight in [0, 1)."""
    if not weight:
        return list(values)
    out, avg, k = [], 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(v)
            continue
        k += 1
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**k))
    return out


MAX_POINTS = 600  # per curve on screen: more only costs the server, the wire and the browser


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(int(r.get("step", len(xs) + 1)))
            ys.append(float(v))
    return xs, ys


def downsample(xs: list, ys: list, max_points: int = MAX_POINTS) -> tuple[list, list]:
    """At most ``max_points`` of a curve for display: the mean of each of ``max_points`` consecutive buckets
    (at the bucket's last x), the last point always kept as it is."""
    n = len(xs)
    if n <= max_points:
        return xs, ys
    size = math.ceil(n / max_points)
    out_x, out_y = [], []
    for i in range(0, n, size):
        chunk = [y for y in ys[i : i + size] if y is not None and math.isfinite(y)]
        out_x.append(xs[min(i + size, n) - 1])
        out_y.append(sum(chunk) / len(chunk) if chunk else None)
    out_y[-1] = ys[-1]
    return out_x, out_y


def _log_safe(ys: list[float]) -> list[float | None]:
    return [y if y is not None and y > 0 else None for y in ys]


def loss_figure(
    records: list[dict],
    names: list[str] | None = None,
    smoothing: float = 0.0,
    log_y: bool = False,
    height_per_row: int = 230,
    max_points: int = MAX_POINTS,
) -> go.Figure:
    """Every named loss of one run against the step, one panel each (their scales differ); long curves are
    shown as at most ``max_points`` bucket means (smoothing is computed on every point first)."""
    names = names or loss_names(records)
    if not names:
        fig = go.Figure()
        fig.update_layout(height=200, annotations=[dict(text="No losses logged yet", showarrow=False)])
        return fig
    cols = 2 if len(names) > 1 else 1
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=names,
        horizontal_spacing=0.08,
        vertical_spacing=min(0.12, 0.5 / max(1, rows)),
    )
    for i, name in enumerate(names):
        r, c = divmod(i, cols)
        xs, ys = _series(records, name)
        sm = smooth(ys, smoothing)  # on every point, then thinned for display
        xs_all = xs
        xs, ys = downsample(xs_all, ys, max_points)
        _, sm = downsample(xs_all, sm, max_points)
        color = PALETTE[i % len(PALETTE)]
        if smoothing:
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=_log_safe(ys) if log_y else ys,
                    mode="lines",
                    line=dict(color=color, width=1),
                    opacity=0.3,
                    name=f"{name} (raw)",
                    showlegend=False,
                ),
                r + 1,
                c + 1,
            )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_log_safe(sm) if log_y else sm,
                mode="lines+markers" if len(xs) < 30 else "lines",
                line=dict(color=color, width=2),
                marker=dict(size=4),
                name=name,
                showlegend=False,
            ),
            r + 1,
            c + 1,
        )
        if log_y:
            fig.update_yaxes(type="log", row=r + 1, col=c + 1)
    fig.update_xaxes(title_text="step", row=rows)
    fig.update_layout(height=max(260, rows * height_per_row), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def overlay_figure(
    runs: dict[str, list[dict]], key: str, smoothing: float = 0.0, log_y: bool = False, x: str = "step"
) -> go.Figure:
    """One loss of several runs on one axis (``x``: step, or wall-clock minutes since each run's first step)."""
    fig = go.Figure()
    for i, (name, records) in enumerate(runs.items()):
        xs, ys = _series(records, key)
        if x == "time":
            walls = [r.get("wall") for r in records if isinstance(r.get(key), (int, float))]
            if walls and all(isinstance(w, (int, float)) for w in walls):
                xs = [(w - walls[0]) / 60 for w in walls]
        ys = smooth(ys, smoothing)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=_log_safe(ys) if log_y else ys,
                mode="lines",
                name=name,
                line=dict(color=PALETTE[i % len(PALETTE)], width=2),
            )
        )
    fig.update_layout(
        height=420,
        xaxis_title="minutes" if x == "time" else "step",
        yaxis_title=key,
        yaxis_type="log" if log_y else "linear",
        legend=dict(orientation="h", y=-0.2),
        margin=dict(l=10, r=10, t=30, b=10),
    )
    return fig


# -- evaluation results --------------------------------------------------------------------------------------
def accuracy_records(evaluations: dict[str, dict]) -> pd.DataFrame:
    """Long table of evaluation results: one row per (run, source, net).

    ``evaluations`` maps a run name to its ``evaluation.json`` (``{"synset": {...}, "random_real": {...}}``).
    """
    rows = []
    for run, ev in evaluations.items():
        if not isinstance(ev, dict):
            continue
        for source in ("synset", "random_real"):
            res = ev.get(source)
            if not isinstance(res, dict):
                continue
            storage = res.get("storage") or {}
            protocol = res.get("protocol") or {}
            for net, r in (res.get("nets") or {}).items():
                rows.append(
                    {
                        "run": run,
                        "source": source,
                        "row": run if source == "synset" else f"{run} · random real",
                        "net": net,
                        "mean": float(r.get("mean", float("nan"))),
                        "std": float(r.get("std", 0.0)),
                        "n": int(r.get("n", len(r.get("per_seed", [])))),
                        "per_seed": " ".join(f"{a:.4f}" for a in r.get("per_seed", [])),
                        "ipc_equivalent": storage.get("ipc_equivalent"),
                        "floats_total": storage.get("floats_total"),
                        "kind": storage.get("kind"),
                        "epochs": protocol.get("epochs"),
                        "reported": protocol.get("reported", "final"),
                        "protocol": protocol_label(protocol),
                        "protocol_id": protocol_id(protocol),
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "run",
            "source",
            "row",
            "net",
            "mean",
            "std",
            "n",
            "per_seed",
            "ipc_equivalent",
            "floats_total",
            "kind",
            "epochs",
            "reported",
            "protocol",
            "protocol_id",
        ],
    )


def protocol_warning(df: pd.DataFrame) -> str | None:
    """A visible warning when the rows of ``accuracy_records`` were evaluated under different protocols."""
    if df.empty or df["protocol_id"].nunique() <= 1:
        return None
    groups = df.groupby("protocol", sort=False)["row"].unique()
    detail = "; ".join(f"{proto}: {', '.join(rows)}" for proto, rows in groups.items())
    return (
        f"These rows were evaluated under {len(groups)} different protocols, so their accuracies are not "
        f"comparable ({detail}). Re-evaluate them with the same settings (Evaluate page) before comparing."
    )


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows (runs and baselines) x nets, each cell 'mean +- std' in percent, plus the storage column."""
    if df.empty:
        return pd.DataFrame()
    cell = df.assign(text=[f"{100 * m:.2f} ± {100 * s:.2f}" for m, s in zip(df["mean"], df["std"], strict=True)])
    table = cell.pivot_table(index="row", columns="net", values="text", aggfunc="first", sort=False)
    ipc = df.groupby("row", sort=False)["ipc_equivalent"].first()
    table.insert(0, "storage (IPC-eq.)", [f"{v:.3f}" if isinstance(v, (int, float)) else "" for v in ipc[table.index]])
    protocol = df.groupby("row", sort=False)["protocol"].first()
    table["protocol"] = list(protocol[table.index])
    table.index.name = None
    table.columns.name = None
    return table


def text_heatmap(
    values: pd.DataFrame, text: list[list[str]], title: str = "acc %", diverging: bool = False, hover_unit: str = ""
) -> go.Heatmap:
    """A rows x columns heatmap trace with ``text`` written in each cell (``diverging``: red-blue centred on 0)."""
    return go.Heatmap(
        z=values.values,
        x=list(values.columns),
        y=list(values.index),
        text=text,
        texttemplate="%{text}",
        colorscale="RdBu" if diverging else "Viridis",
        zmid=0 if diverging else None,
        colorbar=dict(title=title),
        hovertemplate="%{y}<br>%{x}: %{text}" + hover_unit + "<extra></extra>",
    )


def accuracy_heatmap(df: pd.DataFrame) -> go.Figure:
    """Heatmap of mean test accuracy (%): rows runs (and their random-real baselines), columns nets."""
    if df.empty:
        return go.Figure()
    mean = df.pivot_table(index="row", columns="net", values="mean", aggfunc="first", sort=False) * 100
    std = df.pivot_table(index="row", columns="net", values="std", aggfunc="first", sort=False) * 100
    std = std.reindex(index=mean.index, columns=mean.columns)
    text = [
        [("" if math.isnan(m) else f"{m:.1f} ± {s:.1f}") for m, s in zip(mr, sr, strict=True)]
        for mr, sr in zip(mean.values, std.values, strict=True)
    ]
    fig = go.Figure(text_heatmap(mean, text, hover_unit="%"))
    fig.update_layout(
        height=max(220, 60 + 45 * len(mean.index)),
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis=dict(autorange="reversed"),
    )
    return fig


def accuracy_vs_storage(df: pd.DataFrame, net: str | None = None) -> go.Figure:
    """Mean accuracy (+- std) against stored floats in IPC-equivalents, one marker per run / baseline."""
    fig = go.Figure()
    d = df if net is None else df[df["net"] == net]
    for i, (source, part) in enumerate(d.groupby("source", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=part["ipc_equivalent"],
                y=100 * part["mean"],
                error_y=dict(type="data", array=100 * part["std"]),
                mode="markers+text",
                text=part["run"],
                textposition="top center",
                name=source.replace("_", " "),
                marker=dict(size=11, color=PALETTE[i % len(PALETTE)], symbol="circle" if source == "synset" else "x"),
                hovertemplate="%{text}<br>storage %{x:.3f} IPC-eq.<br>acc %{y:.2f}%<extra></extra>",
            )
        )
    fig.update_layout(
        height=420,
        xaxis_title="storage (IPC-equivalents)",
        yaxis_title="test accuracy (%)",
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=-0.2),
    )
    return fig


def ablation_figure(table: pd.DataFrame, net: str, accuracy_title: str = "accuracy (%)") -> go.Figure:
    """Accuracy (+- std over network seeds) and hallucination diversity per arm, from ``workbench.ablation``'s
    table: columns ``arm``, ``{net} acc %``, ``{net} std`` and ``{pixel,feature} {within,between}``."""
    fig = make_subplots(1, 3, subplot_titles=(accuracy_title, "feature distance (1 - cos)", "pixel distance (RMS)"))
    if table.empty:
        return fig
    arms = list(table["arm"])
    error = dict(type="data", array=table[f"{net} std"])
    acc = go.Bar(x=arms, y=table[f"{net} acc %"], error_y=error, marker=dict(color=PALETTE[0]), showlegend=False)
    fig.add_trace(acc, 1, 1)
    for col, space in ((2, "feature"), (3, "pixel")):
        for i, (where, name) in enumerate((("within", "within a basis"), ("between", "between bases"))):
            bar = go.Bar(
                x=arms,
                y=table[f"{space} {where}"],
                name=name,
                marker=dict(color=PALETTE[1 + i]),
                legendgroup=where,
                showlegend=col == 2,
            )
            fig.add_trace(bar, 1, col)
    fig.update_layout(height=420, barmode="group", legend=dict(orientation="h", y=-0.25), margin=dict(t=40, b=10))
    return fig


def grid_figure(
    img,
    n_rows: int,
    n_cols: int,
    cell: tuple[int, int],
    origin: tuple[int, int],
    pitch: tuple[int, int],
    row_names: list[str],
    col_names: list[str],
) -> go.Figure:
    """A composed grid image with one invisible, clickable marker per cell (for click-to-enlarge).

    ``origin`` is the top-left pixel of cell (0, 0), ``pitch`` the distance between cells, ``cell`` the size.
    Point ``customdata`` is (row, col).
    """
    import numpy as np

    arr = np.asarray(img)
    xs, ys, data, text = [], [], [], []
    for r in range(n_rows):
        for c in range(n_cols):
            xs.append(origin[0] + c * pitch[0] + cell[0] / 2)
            ys.append(origin[1] + r * pitch[1] + cell[1] / 2)
            data.append([r, c])
            text.append(f"{row_names[r]} · {col_names[c]}")
    fig = go.Figure(go.Image(z=arr, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            customdata=data,
            text=text,
            marker=dict(size=max(8, min(cell) * 0.9), symbol="square", color="rgba(0,0,0,0)"),
            hovertemplate="%{text}<br>click to enlarge<extra></extra>",
            showlegend=False,
        )
    )
    h, w = arr.shape[:2]
    fig.update_xaxes(visible=False, range=[0, w])
    fig.update_yaxes(visible=False, range=[h, 0], scaleanchor="x")
    fig.update_layout(
        height=min(900, h + 20), margin=dict(l=0, r=0, t=0, b=0), dragmode=False, clickmode="event+select"
    )
    return fig
