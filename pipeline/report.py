"""What a run found, for people: pictures of the identified physics and one HTML page per run.

Pictures (matplotlib, Agg, written atomically):

* :func:`stiffness_figure` — the anchors as points coloured by fitted log10 stiffness, seen from
  the front, the side and the top (in the frame of the up axis), one shared colour bar;
* :func:`physics_figure` — a histogram of log10 k, the soft vector eta_j over the neighbour
  index (Eq. 8, kappa) and the ground friction factor.

Pages (one self-contained HTML file each: inline CSS, no script, no network; every picture and
video is a relative link to a file of the run itself):

* :func:`write_report` writes RUN/report.html from plain data (dicts, paths relative to RUN);
* :func:`collect_run` gathers that data from whatever a run directory holds (settings.yaml,
  loss.png, eval/metrics.json and eval/*.mp4, asset/, figures/*.png, simulations.json); a part
  that is missing is left out of the page, never linked;
* :func:`report_run` draws the figures of RUN/asset into RUN/figures/ and writes the page;
* :func:`write_suite_index` writes a page linking several runs' reports from one table, with
  :func:`suite_row` to make a row from a run's metrics;
* :func:`record_simulation` lists a simulation in RUN/simulations.json for the page.

The stiffness colours (:func:`stiffness_colors`, colormap :data:`STIFFNESS_CMAP`) are the ones
the viewer uses for its anchors too.
"""
from __future__ import annotations

import html
import math
import os
import urllib.parse
from pathlib import Path

import numpy as np

from pipeline.asset import load_asset
from pipeline.data.files import atomic_file, write_json, write_text
from pipeline.data.schema import read_json, read_yaml
from taichi_sim.errors import SgausError

STIFFNESS_CMAP = "viridis"  # perceptually uniform, readable in grey and by colour-blind readers
PHYSICS_FIGURES = ("figures/stiffness.png", "figures/physics.png")
METHOD_LABELS = {"spring_gaus": "Spring-Gaus (sgaus)", "hold": "hold (frozen after fit)",
                 "single_k": "Spring-Gaus, single k"}
METRICS = (("cd", "CD", "lower", 2), ("emd", "EMD", "lower", 3), ("psnr", "PSNR", "higher", 2),
           ("ssim", "SSIM", "higher", 3))  # key, label, better, decimals


# ------------------------------------------------------------------ colours
def _finite_vector(values, name: str) -> np.ndarray:
    a = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise SgausError(f"{name} must be a non-empty vector [N], got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise SgausError(f"{name} must be finite")
    return a


def stiffness_range(log_stiffness, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """The colour range of log10 k: the values' min and max unless given, widened to +-0.5 around
    a single value so that the colour bar is never empty."""
    v = _finite_vector(log_stiffness, "log_stiffness")
    lo = float(v.min()) if vmin is None else float(vmin)
    hi = float(v.max()) if vmax is None else float(vmax)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise SgausError(f"the stiffness colour range must be finite with vmin <= vmax, got {lo} .. {hi}")
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def stiffness_colors(log_stiffness, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """uint8 RGB colours [N,3] of log10 stiffness values [N] in :data:`STIFFNESS_CMAP` over
    ``vmin .. vmax`` (default: the values' range); values outside it take the end colours."""
    from matplotlib import colormaps

    v = _finite_vector(log_stiffness, "log_stiffness")
    lo, hi = stiffness_range(v, vmin, vmax)
    rgba = colormaps[STIFFNESS_CMAP](np.clip((v - lo) / (hi - lo), 0.0, 1.0))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


# ------------------------------------------------------------------ figures
def _view_axes(up) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right r, up u and towards-the-viewer f (= r x u) of the front view for an up vector."""
    u = np.asarray(up, dtype=np.float64).reshape(-1)
    if u.shape != (3,) or not np.isfinite(u).all() or np.linalg.norm(u) < 1e-12:
        raise SgausError(f"up must be 3 finite numbers, not all zero, got {up!r}")
    u = u / np.linalg.norm(u)
    a = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    r = a - u * (a @ u)
    r /= np.linalg.norm(r)
    return r, u, np.cross(r, u)


def _axis_name(v: np.ndarray, plus: str = "") -> str:
    """"x", "−z" ... for a world axis (``plus`` before a positive one), else the vector."""
    for i, name in enumerate("xyz"):
        if abs(abs(v[i]) - 1.0) < 1e-6:
            return (plus if v[i] > 0 else "−") + name
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def stiffness_figure(anchors, log_stiffness, path, up=(0.0, 1.0, 0.0), vmin: float | None = None,
                     vmax: float | None = None, title: str | None = None) -> Path:
    """A PNG of the anchors [N,3] as points coloured by log10 stiffness [N], seen from the front
    (right r, up u), the side (from +r) and the top (from +u), where u is ``up`` and r the
    world x axis made perpendicular to it; nearer points are drawn over farther ones; one colour
    bar for the three views, over ``vmin .. vmax`` (default: the values' range)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    pts = np.asarray(anchors.detach().cpu().numpy() if hasattr(anchors, "detach") else anchors, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise SgausError(f"anchors must be [N,3] with N >= 1, got shape {list(pts.shape)}")
    if not np.isfinite(pts).all():
        raise SgausError("anchors must be finite")
    k = _finite_vector(log_stiffness, "log_stiffness")
    if len(k) != len(pts):
        raise SgausError(f"log_stiffness has {len(k)} values for {len(pts)} anchors")
    lo, hi = stiffness_range(k, vmin, vmax)
    r, u, f = _view_axes(up)
    centre = 0.5 * (pts.min(0) + pts.max(0))
    rel = pts - centre
    half = 0.55 * float(np.abs(rel).max() * 2) or 1.0  # one scale for all three views
    views = [("front", r, u, f), ("side", -f, u, r), ("top", r, -f, u)]
    size = float(np.clip(20000.0 / len(pts), 3.0, 80.0))
    fig = Figure(figsize=(12.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    norm = Normalize(lo, hi)
    for ax, (name, h, v, towards) in zip(axes, views):
        order = np.argsort(rel @ towards)  # far first: near points end on top
        ax.scatter(rel[order] @ h, rel[order] @ v, c=k[order], cmap=STIFFNESS_CMAP, norm=norm, s=size,
                   linewidths=0)
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_aspect("equal")
        ax.set_title(f"{name} (seen from {_axis_name(towards, '+')})")
        ax.set_xlabel(_axis_name(h))
        ax.set_ylabel(_axis_name(v))
        ax.grid(alpha=0.25)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=STIFFNESS_CMAP), ax=list(axes), shrink=0.9)
    bar.set_label("log10 k (fitted stiffness)")
    fig.suptitle(title or f"Fitted stiffness of {len(pts)} anchors: log10 k from {k.min():.2f} to {k.max():.2f}")
    return _save(fig, path)


def physics_figure(log_stiffness, kappa: float, k_neighbors: int, n_c: int, friction: float | None, path,
                   title: str | None = None) -> Path:
    """A PNG of the identified physics: histogram of log10 k (bars coloured as in
    :func:`stiffness_figure`), the soft vector eta_j over the neighbour index j = 1..K (Eq. 8,
    from ``kappa``; the first ``n_c`` are 1) and the ground friction factor (0 = sticky,
    1 = smooth; None: no ground)."""
    import torch
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from taichi_sim.spring_params import soft_vector

    k = _finite_vector(log_stiffness, "log_stiffness")
    kappa = float(kappa)
    if not math.isfinite(kappa):
        raise SgausError(f"kappa must be finite, got {kappa}")
    if int(k_neighbors) != k_neighbors or int(k_neighbors) < 1:
        raise SgausError(f"k_neighbors must be a positive integer, got {k_neighbors}")
    if int(n_c) != n_c or not 0 <= int(n_c) <= int(k_neighbors):
        raise SgausError(f"n_c must be an integer in [0, k_neighbors={k_neighbors}], got {n_c}")
    if friction is not None and not 0.0 <= float(friction) <= 1.0:
        raise SgausError(f"friction must be a factor in [0, 1] (0 = sticky, 1 = smooth) or None, got {friction}")
    K, nc = int(k_neighbors), int(n_c)
    eta = soft_vector(torch.tensor(kappa, dtype=torch.float64), K, nc).numpy()
    fig = Figure(figsize=(11, 4.2))
    ax_h, ax_e = fig.subplots(1, 2)
    lo, hi = stiffness_range(k)
    bins = int(np.clip(round(math.sqrt(len(k))), 5, 40))
    counts, edges = np.histogram(k, bins=bins, range=(lo, hi))
    mids = 0.5 * (edges[1:] + edges[:-1])
    ax_h.bar(mids, counts, width=np.diff(edges), color=colormaps[STIFFNESS_CMAP]((mids - lo) / (hi - lo)),
             edgecolor="white", linewidth=0.5)
    med = float(np.median(k))
    ax_h.axvline(med, color="black", linestyle="--", linewidth=1)
    ax_h.set_title(f"stiffness of {len(k)} anchors (median log10 k = {med:.2f})")
    ax_h.set_xlabel("log10 k")
    ax_h.set_ylabel("anchors")
    ax_h.grid(alpha=0.25, axis="y")
    j = np.arange(1, K + 1)
    ax_e.plot(j, eta, marker="o" if K <= 64 else None, markersize=3, color="#1f6fb4")
    ax_e.axvline(nc + 0.5, color="grey", linestyle=":", linewidth=1)
    ax_e.text(nc + 0.5, 0.5, f" n_c = {nc}", color="grey", va="center")
    ax_e.set_ylim(-0.05, 1.08)
    ax_e.set_xlim(0.5, K + 0.5)
    sp = math.log1p(math.exp(-abs(kappa))) + max(kappa, 0.0)  # softplus, overflow-free
    ax_e.set_title(f"soft vector η_j (κ = {kappa:.3f}, softplus κ = {sp:.3f})")
    ax_e.set_xlabel("neighbour index j (nearest first)")
    ax_e.set_ylabel("spring weight η_j")
    ax_e.grid(alpha=0.25)
    ftext = ("no ground" if friction is None else
             f"ground friction factor {float(friction):.3f}  (0 = sticky, 1 = smooth)")
    fig.suptitle(title or f"Identified physics — {ftext}")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------ HTML
CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dde5; --bg: #ffffff; --band: #f4f6f9; --accent: #1f6fb4; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
header { padding: 24px 32px 12px; background: var(--band); border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; color: var(--muted); }
nav { margin-top: 10px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { padding: 8px 32px 32px; max-width: 1400px; }
section { margin-top: 28px; }
h2 { font-size: 19px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.num { text-align: right; }
td.best { font-weight: 700; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 8px 0; }
figure img, figure video { max-width: 100%; border: 1px solid var(--line); background: #000; }
figure video { min-width: 320px; }
details summary { cursor: pointer; color: var(--accent); }
figure img { background: #fff; }
figcaption, .caption { color: var(--muted); font-size: 13px; max-width: 1000px; }
.kv td:first-child { color: var(--muted); }
.numbers { font-size: 17px; }
footer { padding: 16px 32px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); }
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _media(run_dir: Path, rel) -> str:
    """A checked, URL-quoted relative link to a file of the run: SgausError unless ``rel`` is a
    relative path inside ``run_dir`` that exists."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or str(rel).startswith(("http:", "https:", "//", "file:")):
        raise SgausError(f"report media must be paths relative to the run directory, got {str(rel)!r}")
    if not (run_dir / p).is_file():
        raise SgausError(f"report media {str(rel)!r} does not exist in {run_dir}")
    return _esc(urllib.parse.quote(p.as_posix()))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in _flatten(d))
    return f'<table class="kv">{rows}</table>'


def _item(entry) -> tuple[str, str | None]:
    """(path, caption) of a media entry given as a path or a dict with src/caption."""
    if isinstance(entry, dict):
        if "src" not in entry:
            raise SgausError(f"a media entry needs a 'src' path, got {entry!r}")
        return entry["src"], entry.get("caption")
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        return entry[0], entry[1]
    return entry, None


def _figure(run_dir: Path, entry, kind: str) -> str:
    src, caption = _item(entry)
    link = _media(run_dir, src)
    alt = _esc(caption or Path(src).stem)
    if kind == "img":
        body = f'<img src="{link}" alt="{alt}">'
    else:
        body = f'<video controls loop muted preload="metadata" src="{link}"></video>'
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f"<figure>{body}{cap}</figure>"


def metrics_table(metrics: dict) -> str:
    """The metrics of ``sgaus eval`` (reconstruction / future, baselines) as an HTML table, the
    best value of each column in bold."""
    if not isinstance(metrics, dict) or not all(isinstance(metrics.get(p), dict) for p in ("reconstruction", "future")):
        raise SgausError("metrics must be a dict with 'reconstruction' and 'future' dicts (RUN/eval/metrics.json)")
    rows = [("spring_gaus", metrics)]
    for name, res in (metrics.get("baselines") or {}).items():
        if not isinstance(res, dict) or not all(isinstance(res.get(p), dict) for p in ("reconstruction", "future")):
            raise SgausError(f"baseline {name!r} must have 'reconstruction' and 'future' dicts")
        rows.append((name, res))
    cols = [(part, key, better, digits) for part in ("reconstruction", "future") for key, _l, better, digits in METRICS]

    def value(res, part, key):
        v = res[part].get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    best = {}
    for part, key, better, _d in cols:
        vals = [value(res, part, key) for _n, res in rows]
        vals = [v for v in vals if v is not None]
        if len(vals) > 1:
            best[(part, key)] = min(vals) if better == "lower" else max(vals)
    head1 = ('<tr><th rowspan="2">method</th><th colspan="4">dynamic reconstruction</th>'
             '<th colspan="4">future prediction</th></tr>')
    head2 = "<tr>" + "".join(f"<th>{label} {'↓' if better == 'lower' else '↑'}</th>"
                             for _p in range(2) for _k, label, better, _d in METRICS) + "</tr>"
    body = []
    for name, res in rows:
        cells = []
        for part, key, _b, digits in cols:
            v = value(res, part, key)
            cls = "num best" if v is not None and best.get((part, key)) == v else "num"
            cells.append(f'<td class="{cls}">{"–" if v is None else f"{v:.{digits}f}"}</td>')
        body.append(f"<tr><td>{_esc(METHOD_LABELS.get(name, name))}</td>{''.join(cells)}</tr>")
    return f"<table>{head1}{head2}{''.join(body)}</table>"


def _metrics_caption(metrics: dict) -> str:
    s = metrics.get("settings") or {}
    parts = []
    if "fit_frames" in s and "n_frames" in s:
        f, n = int(s["fit_frames"]), int(s["n_frames"])
        parts.append(f"Dynamic reconstruction: mean over the fitted frames 1–{f - 1}; future prediction: mean over "
                     f"frames {f}–{n - 1}.")
    parts.append("CD: squared-distance Chamfer distance in 10³ mm² (scene unit = 1 m); EMD: mean matched distance "
                 "in m; both against the ground truth's surface particles. PSNR / SSIM over every camera"
                 + (f" at image scale {_fmt(s['image_scale'])}." if "image_scale" in s else "."))
    parts.append("hold: the fitted motion frozen after the last fitted frame; single k: refitted with one global "
                 "stiffness. Best of each column in bold; – : not available.")
    return " ".join(parts)


def write_report(run_dir, title: str | None = None, settings: dict | None = None, data: dict | None = None,
                 loss_images=(), metrics: dict | None = None, eval_videos=(), physics: dict | None = None,
                 physics_images=(), simulations=(), figures=(), notes=()) -> Path:
    """Write RUN/report.html, one self-contained page, from plain data. Paths are relative to
    ``run_dir`` and must exist (SgausError otherwise); empty parts are left out of the page.
    Sections, in this order: data, metrics, ground truth | prediction videos, identified physics,
    simulations, loss curves, settings (folded), more figures, notes.

    settings        dict of the fit settings (shown as a table; nested dicts as a.b)
    data            dict summarising the data and the asset (dataset, frames, counts ...)
    loss_images     paths of loss-curve pictures
    metrics         RUN/eval/metrics.json's dict: reconstruction, future, baselines, settings
    eval_videos     ground truth | prediction videos: paths, or dicts {"src", "caption"}
    physics         dict of identified numbers (kappa, friction ...), shown large
    physics_images  pictures of the identified physics (stiffness_figure, physics_figure)
    simulations     dicts {"name", "video" (path), "edits" (dict, optional), "description" (optional)}
    figures         further pictures: paths, or dicts {"src", "caption"}
    notes           lines of plain text shown at the end (e.g. simulations outside the run)
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run directory: {run_dir}")
    sections: list[tuple[str, str, str]] = []  # (id, heading, html), in the order people look
    if data:
        sections.append(("data", "Data and asset", _kv_table(data)))
    if metrics:
        sections.append(("metrics", "Metrics",
                         metrics_table(metrics) + f'<p class="caption">{_esc(_metrics_caption(metrics))}</p>'))
    if eval_videos:
        sections.append(("comparison", "Ground truth | prediction",
                         '<div class="grid">' + "".join(_figure(run_dir, e, "video") for e in eval_videos) + "</div>"))
    if physics or physics_images:
        body = '<div class="numbers">' + _kv_table(physics) + "</div>" if physics else ""
        body += '<div class="grid">' + "".join(_figure(run_dir, e, "img") for e in physics_images) + "</div>"
        sections.append(("physics", "Identified physics", body))
    if simulations:
        figs = []
        for sim in simulations:
            if not isinstance(sim, dict) or "video" not in sim:
                raise SgausError(f"a simulation entry needs a 'video' path, got {sim!r}")
            name = str(sim.get("name") or Path(sim["video"]).parent.name)
            edits = {k: v for k, v in (sim.get("edits") or {}).items()  # the edits made, not the defaults
                     if v is not None and v is not False and not (k == "stiffness_scale" and v == 1.0)}
            cap = name + (": " + ", ".join(f"{k} = {_fmt(v)}" for k, v in edits.items()) if edits else "")
            if sim.get("description"):
                cap += f" — {sim['description']}"
            figs.append(_figure(run_dir, {"src": sim["video"], "caption": cap}, "video"))
        sections.append(("simulations", "Simulations", '<div class="grid">' + "".join(figs) + "</div>"))
    if loss_images:
        sections.append(("loss", "Loss curves",
                         '<div class="grid">' + "".join(_figure(run_dir, e, "img") for e in loss_images) + "</div>"))
    if settings:
        n = len(_flatten(settings))
        sections.append(("settings", "Settings",
                         f"<details><summary>all {n} settings of the fit</summary>{_kv_table(settings)}</details>"))
    if figures:
        sections.append(("figures", "More figures",
                         '<div class="grid">' + "".join(_figure(run_dir, e, "img") for e in figures) + "</div>"))
    if notes:
        sections.append(("notes", "Notes", "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"))
    title = title or f"sgaus run {run_dir.resolve().name}"
    nav = "".join(f'<a href="#{sid}">{_esc(head)}</a>' for sid, head, _b in sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(head)}</h2>{b}</section>' for sid, head, b in sections)
    if not sections:
        body = "<p>This run holds nothing to show yet: fit it (sgaus fit) and evaluate it (sgaus eval).</p>"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(run_dir.resolve())}</p><nav>{nav}</nav></header>\n"
        f"<main>{body}</main>\n"
        "<footer>Written by sgaus. Pictures and videos are files of this run directory, linked relatively: "
        "move or copy the directory as a whole.</footer>\n</body></html>\n"
    )
    return write_text(run_dir / "report.html", page)


# ------------------------------------------------------------------ gathering a run
def _friction(asset) -> float | None:
    """The fitted ground friction factor (0 = sticky, 1 = smooth) as the simulator maps it; None
    without a ground."""
    from taichi_sim.spring_params import friction_from_logit

    if asset.model.ground_point is None:
        return None
    return float(friction_from_logit(asset.params.friction_logit.detach().double()))


def _physics_numbers(asset) -> dict:
    model, params = asset.model, asset.params
    k = params.log_stiffness.detach().double().numpy()
    friction = _friction(asset)
    return {
        "log10 k (min / median / max)": f"{k.min():.3f} / {np.median(k):.3f} / {k.max():.3f}",
        "kappa (soft vector)": round(float(params.kappa), 4),
        "ground friction (0 = sticky, 1 = smooth)": "no ground" if friction is None else round(friction, 4),
        "initial velocity (m/s)": tuple(round(float(x), 4) for x in asset.v0.detach().double()),
        "springs per anchor K": model.n_springs,
        "spring damping zeta0": round(float(model.zeta0), 4),
        "n_c (weight-1 neighbours)": model.n_c,
        "gravity (m/s²)": model.gravity,
        "ground point": "none" if model.ground_point is None else model.ground_point,
        "ground normal": model.ground_normal,
        "ground contact": "none" if model.ground_point is None else (
            f"penalty (contact time {model.contact_time * 1e3:g} ms, restitution {model.restitution:.3f})"
            if model.contact == "penalty" else "projection (the authors' Eq. 14)"),
        "contact offset (anchors may sink)": "none" if model.ground_point is None else (
            f"{model.contact_offset:.4g}" + (", the underside within it cut flat" if model.contact_floor == "flat"
                                             else "")),
    }


def collect_run(run_dir) -> dict:
    """The keyword arguments of :func:`write_report` for whatever RUN holds: settings.yaml,
    loss*.png, eval/metrics.json and eval/*.mp4, the fitted asset in asset/ (read by
    pipeline.asset.load_asset), figures/*.png and the simulations listed in simulations.json whose videos lie
    inside RUN (others are named in the notes, not linked)."""
    import yaml

    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"no such run directory: {run}")
    if not run.is_dir():
        raise SgausError(f"{run} is not a directory")
    out: dict = {"title": f"sgaus run {run.resolve().name}"}
    data: dict = {}
    p = run / "settings.yaml"
    if p.is_file():
        saved = read_yaml(p)
        if isinstance(saved.get("settings"), dict):
            out["settings"] = saved["settings"]
        if saved.get("data"):
            data["dataset"] = saved["data"]
    if (run / "asset" / "physics.json").is_file():
        asset = load_asset(run)
        info = asset.info
        if info.get("data"):
            data["dataset"] = info["data"]
        for key, label in (("n_frames", "frames"), ("fit_frames", "fitted frames"), ("image_scale", "image scale"),
                           ("single_k", "single k (ablation)"), ("soft_vector", "soft vector")):
            if key in info:
                data[label] = info[key]
        data["Gaussians"] = len(asset.gaussians)
        data["anchors"] = asset.model.n_anchors
        data["springs (k-nearest lists)"] = asset.model.n_anchors * asset.model.n_springs
        data["springs act on"] = "both ends" if asset.model.springs == "mirrored" else "their owner (directed)"
        data["seconds per frame"] = asset.integrator.frame_dt
        data["substeps per frame"] = asset.integrator.substeps
        out["physics"] = _physics_numbers(asset)
    if data:
        out["data"] = data
    loss = sorted(q.name for q in run.glob("loss*.png") if q.is_file())
    if loss:
        out["loss_images"] = loss
    if (run / "eval" / "metrics.json").is_file():
        out["metrics"] = read_json(run / "eval" / "metrics.json")
    videos = sorted(q for q in (run / "eval").glob("*.mp4") if q.is_file())
    if videos:
        out["eval_videos"] = [{"src": f"eval/{q.name}", "caption": "ground truth | prediction, camera "
                               + (q.stem[len("video_"):] if q.stem.startswith("video_") else q.stem)} for q in videos]
    figs = sorted(q for q in (run / "figures").glob("*.png") if q.is_file())
    phys_imgs = [f for f in PHYSICS_FIGURES if (run / f).is_file()]
    if phys_imgs:
        out["physics_images"] = phys_imgs
    others = [f"figures/{q.name}" for q in figs if f"figures/{q.name}" not in PHYSICS_FIGURES]
    if others:
        out["figures"] = others
    sims, notes = [], []
    if (run / "simulations.json").is_file():
        listed = read_json(run / "simulations.json")
        entries = listed.get("simulations", []) if isinstance(listed, dict) else listed
        if not isinstance(entries, list):
            raise SgausError(f"{run / 'simulations.json'} must hold a list of simulations")
        for e in entries:
            if not isinstance(e, dict) or not e.get("video"):
                raise SgausError(f"{run / 'simulations.json'}: every simulation needs a 'video' path")
            video = Path(e["video"])
            rel = _inside(run, video if video.is_absolute() else run / video)
            name = str(e.get("name") or video.parent.name)
            if rel is None:
                notes.append(f"simulation {name}: {video} lies outside this run directory and is not linked")
            elif (run / rel).is_file():
                sims.append({**e, "name": name, "video": rel})
            else:
                notes.append(f"simulation {name}: its video {e['video']} is missing")
    if sims:
        out["simulations"] = sims
    if notes:
        out["notes"] = notes
    return out


def _inside(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` (posix) when it lies inside it, else None."""
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        return None


def write_run_figures(run_dir) -> list[Path]:
    """RUN/figures/stiffness.png and physics.png from the fitted asset in RUN/asset; the up axis
    of the views is the ground normal. Nothing is drawn when there is no asset."""
    run = Path(run_dir)
    if not (run / "asset" / "physics.json").is_file():
        return []
    asset = load_asset(run)
    model, params = asset.model, asset.params
    k = params.log_stiffness.detach().double().numpy()
    return [
        stiffness_figure(model.rest_positions, k, run / "figures" / "stiffness.png", up=model.ground_normal),
        physics_figure(k, float(params.kappa), model.n_springs, model.n_c, _friction(asset),
                       run / "figures" / "physics.png"),
    ]


def report_run(run_dir, figures: bool = True) -> Path:
    """Draw RUN/figures/ from the asset (when ``figures`` and there is one) and write RUN/report.html.
    A mistake in the run's files (an SgausError) is raised again naming the report, so that a
    command that finished its own work says that only the report is missing."""
    try:
        if figures:
            write_run_figures(run_dir)
        return write_report(run_dir, **collect_run(run_dir))
    except SgausError as err:
        raise SgausError(f"{Path(run_dir) / 'report.html'} was not written: {err}") from err


def record_simulation(run_dir, name: str, video, edits: dict | None = None, description: str | None = None) -> Path:
    """List a simulation's video in RUN/simulations.json (replacing an entry of the same name);
    the path is stored relative to RUN when the video lies inside it."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"no such run directory: {run}")
    if not str(name).strip():
        raise SgausError("a simulation needs a name")
    path = run / "simulations.json"
    entries = []
    if path.is_file():
        listed = read_json(path)
        entries = listed.get("simulations", []) if isinstance(listed, dict) else listed
        if not isinstance(entries, list):
            raise SgausError(f"{path} must hold a list of simulations")
    video = Path(video)
    rel = _inside(run, video if video.is_absolute() else Path.cwd() / video)
    entry = {"name": str(name), "video": rel if rel is not None else str(video.resolve())}
    if edits:
        entry["edits"] = edits
    if description:
        entry["description"] = str(description)
    entries = [e for e in entries if not (isinstance(e, dict) and e.get("name") == entry["name"])] + [entry]
    return write_json(path, {"simulations": entries})


# ------------------------------------------------------------------ several runs
def suite_row(run_dir, name: str | None = None) -> dict:
    """A row for :func:`write_suite_index`: the run's name, its report.html and its headline
    metrics (reconstruction and future CD, PSNR, SSIM) when RUN/eval/metrics.json exists."""
    run = Path(run_dir)
    row: dict = {"name": name or run.resolve().name, "report": run / "report.html"}
    m = run / "eval" / "metrics.json"
    if m.is_file():
        metrics = read_json(m)
        for part, short in (("reconstruction", "recon"), ("future", "future")):
            for key, label, better, _d in METRICS:
                v = (metrics.get(part) or {}).get(key)
                row[f"{short} {label} {'↓' if better == 'lower' else '↑'}"] = v
    return row


def write_suite_index(directory, rows, title: str = "sgaus suite", columns=None) -> Path:
    """DIR/index.html: a table with one row per run, its name linking to its report.html.

    rows     dicts with "name", "report" (a report.html path, absolute or relative to DIR, that
             must exist) and any other scalar entries, shown as columns (nested dicts as a.b)
    columns  the columns to show, in order (default: every other key, in order of appearance)
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such directory: {directory}")
    rows = list(rows)
    prepared = []
    for row in rows:
        if not isinstance(row, dict) or "name" not in row or "report" not in row:
            raise SgausError(f"every suite row needs a 'name' and a 'report' path, got {row!r}")
        report = Path(row["report"])
        report = report if report.is_absolute() else directory / report
        if not report.is_file():
            raise SgausError(f"the report of {row['name']!r} does not exist: {report}")
        link = Path(os.path.relpath(os.path.realpath(report), os.path.realpath(directory))).as_posix()
        prepared.append((row, link, dict(_flatten({k: v for k, v in row.items() if k not in ("name", "report")}))))
    if columns is None:
        columns = []
        for _r, _l, values in prepared:
            columns += [c for c in values if c not in columns]
    head = "<tr><th>run</th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
    body = []
    for row, link, values in prepared:
        cells = "".join(
            f'<td class="{"num" if isinstance(values.get(c), (int, float)) else ""}">{_esc(_fmt(values.get(c)))}</td>'
            for c in columns)
        body.append(f'<tr><td><a href="{_esc(urllib.parse.quote(link))}">{_esc(row["name"])}</a></td>{cells}</tr>')
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{_esc(title)}</h1><p>{len(prepared)} runs</p></header>\n"
        f"<main><section><table>{head}{''.join(body)}</table></section></main>\n"
        "<footer>Written by sgaus. Each run's name opens its report.</footer>\n</body></html>\n"
    )
    return write_text(directory / "index.html", page)


__all__ = ["STIFFNESS_CMAP", "stiffness_colors", "stiffness_range", "stiffness_figure", "physics_figure",
           "metrics_table", "write_report", "collect_run", "write_run_figures", "report_run", "record_simulation",
           "suite_row", "write_suite_index"]
