"""The evaluation's outputs: `metrics.json` (every number) and a self-contained plotly HTML report."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

GOALS = {  # issue 8's targets, shown beside the measured numbers
    "psnr_h12": 30.0,
    "ssim_h12": 0.93,
    "psnr_gain_over_copy_last_h12": 6.0,
    "psnr_h60": 24.0,
    "counterfactual_gap_db": 1.0,
    "pearson": 0.95,
    "spearman": 0.9,
}


def at_horizon(summary: dict, key: str, h: int) -> float | None:
    """The mean of `key` at horizon h (1-based) in an open-loop/counterfactual summary, if measured."""
    values = summary.get(key) or []
    return values[h - 1] if 0 < h <= len(values) else None


def headline(metrics: dict) -> dict[str, float | None]:
    """The issue's goal quantities from the per-stage summaries (None where not measured)."""
    ol, cf, rk = metrics.get("open_loop", {}), metrics.get("counterfactual", {}), metrics.get("ranking", {})
    out: dict[str, float | None] = {}
    for h in (12, 60):
        out[f"psnr_h{h}"] = at_horizon(ol, "psnr", h)
        out[f"ssim_h{h}"] = at_horizon(ol, "ssim", h)
        out[f"copy_last_psnr_h{h}"] = at_horizon(ol, "baseline_psnr", h)
        cf_h = at_horizon(cf, "psnr", h)
        out[f"counterfactual_psnr_h{h}"] = cf_h
        out[f"counterfactual_gap_db_h{h}"] = (
            round(out[f"psnr_h{h}"] - cf_h, 4) if cf_h is not None and out[f"psnr_h{h}"] is not None else None
        )
    p12, b12 = out["psnr_h12"], out["copy_last_psnr_h12"]
    out["psnr_gain_over_copy_last_h12"] = round(p12 - b12, 4) if p12 is not None and b12 is not None else None
    out["pearson"], out["spearman"] = rk.get("pearson"), rk.get("spearman")
    out["pearson_ci"], out["spearman_ci"] = rk.get("pearson_ci"), rk.get("spearman_ci")
    out["success_val_balanced_accuracy"] = metrics.get("success", {}).get("val", {}).get("balanced_accuracy")
    return out


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def write_metrics(metrics: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps(_clean(metrics), indent=2, allow_nan=False))
    return path


def _quality_figure(metrics: dict) -> go.Figure | None:
    ol, cf = metrics.get("open_loop"), metrics.get("counterfactual")
    if not ol and not cf:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("PSNR (dB) vs horizon", "SSIM vs horizon"))
    lines = [
        (ol, "psnr", "ssim", "data actions", "#1f77b4", "solid"),
        (ol, "baseline_psnr", "baseline_ssim", "copy last frame (data)", "#7f7f7f", "dot"),
        (cf, "psnr", "ssim", "counterfactual actions", "#d62728", "solid"),
        (cf, "baseline_psnr", None, "copy last frame (counterfactual)", "#ff9896", "dot"),
    ]
    for summary, p_key, s_key, name, colour, dash in lines:
        if not summary:
            continue
        style = {"color": colour, "dash": dash}
        x = summary["horizons"]
        fig.add_trace(go.Scatter(x=x, y=summary[p_key], name=name, line=style, legendgroup=name), 1, 1)
        if s_key:
            fig.add_trace(
                go.Scatter(x=x, y=summary[s_key], name=name, line=style, legendgroup=name, showlegend=False),
                1,
                2,
            )
    fig.update_xaxes(title_text="horizon (frames)")
    fig.update_layout(height=420, margin={"t": 40})
    return fig


def _ranking_figure(ranking: dict) -> go.Figure | None:
    if not ranking:
        return None
    x, y, names = ranking["sim_success_rate"], ranking["world_success_rate"], ranking["policies"]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="y = x", line={"dash": "dash", "color": "#999"})
    )
    fig.add_trace(
        go.Scatter(x=x, y=y, mode="markers+text", text=names, textposition="top center", name="policies")
    )

    def with_ci(name: str) -> str:
        ci = ranking.get(f"{name}_ci")
        return f"{ranking.get(name)}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    level = ranking.get("ci_level")
    title = (
        f"Policy success rate: BridgeSim vs learned world (Pearson {with_ci('pearson')}, Spearman "
        f"{with_ci('spearman')}" + (f"; {level:.0%} bootstrap intervals)" if level else ")")
    )
    fig.update_layout(
        title=title, height=480, xaxis_title="BridgeSim-v0", yaxis_title="BridgeWorld (learned)"
    )
    fig.update_xaxes(range=[-0.05, 1.05])
    fig.update_yaxes(range=[-0.05, 1.05])
    return fig


def _frames_figure(examples: dict[str, np.ndarray] | None, columns: int = 6) -> go.Figure | None:
    """Ground truth (top) and prediction (bottom) of the first open-loop episode at a few horizons."""
    if not examples or len(examples.get("truth", [])) < 2:
        return None
    truth, pred = examples["truth"], examples["pred"]
    picks = np.unique(np.linspace(0, len(truth) - 1, min(columns, len(truth))).round().astype(int))
    fig = make_subplots(rows=2, cols=len(picks), subplot_titles=[f"h = {h}" for h in picks])
    for col, h in enumerate(picks, start=1):
        fig.add_trace(go.Image(z=truth[h]), 1, col)
        fig.add_trace(go.Image(z=pred[h]), 2, col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title="Open loop, first episode: ground truth (top) vs model (bottom)", height=360)
    return fig


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td><td>{GOALS.get(k, '')}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table><tr><th>quantity</th><th>measured</th><th>goal</th></tr>{cells}</table>"


def write_report(metrics: dict, out_dir: Path, examples: dict[str, np.ndarray] | None = None) -> Path:
    """`report.html`: headline table, quality curves, example frames, ranking scatter; plotly.js inlined."""
    candidates = (
        _quality_figure(metrics),
        _frames_figure(examples),
        _ranking_figure(metrics.get("ranking", {})),
    )
    figures = [f for f in candidates if f is not None]
    parts = []
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    run = {k: metrics.get(k) for k in ("checkpoint", "data", "split", "device", "model")}
    body = (
        "<h1>worldsim-eval</h1>"
        f"<pre>{html.escape(json.dumps(_clean(run), indent=1))}</pre>"
        f"<h2>Headline</h2>{_table(metrics.get('headline', {}))}"
        f"<h2>Success model</h2><pre>{html.escape(json.dumps(_clean(metrics.get('success', {})), indent=1))}</pre>"
        + "".join(parts)
        + f"<h2>Timings (s)</h2><pre>{html.escape(json.dumps(_clean(metrics.get('timings', {})), indent=1))}</pre>"
    )
    style = "body{font-family:sans-serif;margin:2em} td,th{padding:2px 10px;border-bottom:1px solid #ddd}"
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>worldsim-eval</title><style>{style}</style></head><body>{body}</body></html>"
    path = Path(out_dir) / "report.html"
    path.write_text(page)
    return path
