"""pipeline.report: the stiffness and physics pictures (checked on their pixels), the run's
report page (links only to existing files of the run, nothing from the network, missing parts
left out), the suite index, and the page rendered by headless Chromium (`make test-browser`)."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.report import (collect_run, metrics_table, physics_figure, record_simulation, report_run,
                             stiffness_colors, stiffness_figure, suite_row, write_report, write_suite_index)

VIRIDIS_LOW = np.array([68, 1, 84])  # viridis(0)
VIRIDIS_HIGH = np.array([253, 231, 37])  # viridis(1)


def read_png(path) -> np.ndarray:
    import imageio.v2 as imageio

    return imageio.imread(path)[..., :3].astype(np.float64)


# ------------------------------------------------------------------ pictures
def halves():
    """Anchors in a box; the x < 0 half has log10 k = 2, the x > 0 half 4."""
    side = np.linspace(-0.1, 0.1, 8)
    pts = np.stack(np.meshgrid(side, side * 0.6, side * 0.8, indexing="ij"), -1).reshape(-1, 3)
    return pts, np.where(pts[:, 0] < 0, 2.0, 4.0)


def column_runs(mask: np.ndarray, gap: int = 45) -> list[tuple[int, int]]:
    """Column ranges holding masked pixels, merged across gaps narrower than ``gap``."""
    cols = np.flatnonzero(mask.any(0))
    runs, start = [], cols[0]
    for a, b in zip(cols[:-1], cols[1:]):
        if b > a + gap:
            runs.append((start, a + 1))
            start = b
    runs.append((start, cols[-1] + 1))
    return runs


def test_stiffness_figure_shows_the_two_halves_in_two_colours(tmp_path):
    pts, k = halves()
    path = stiffness_figure(pts, k, tmp_path / "stiffness.png", up=(0.0, 1.0, 0.0))
    img = read_png(path)
    assert img.shape[1] > 3 * img.shape[0] / 2  # three views side by side
    coloured = img.max(-1) - img.min(-1) > 60  # points and the colour bar; text, axes and grid are grey
    runs = column_runs(coloured)
    assert len(runs) == 4, runs  # front, side, top, colour bar
    front, side, top, bar = runs

    def mean_colour(c0, c1):
        sel = coloured[:, c0:c1]
        return img[:, c0:c1][sel].mean(0)

    for c0, c1 in (front, top):  # x points right in both: the soft half left, the stiff half right
        mid = (c0 + c1) // 2
        left, right = mean_colour(c0, mid), mean_colour(mid, c1)
        assert np.abs(left - VIRIDIS_LOW).max() < 40, left
        assert np.abs(right - VIRIDIS_HIGH).max() < 40, right
        assert np.linalg.norm(left - right) > 150
    # seen from +x the stiff half is in front and hides the soft one
    assert np.abs(mean_colour(*side) - VIRIDIS_HIGH).max() < 40
    # the colour bar runs from the soft colour to the stiff one
    bar_pixels = img[:, bar[0]:bar[1]][coloured[:, bar[0]:bar[1]]]
    assert np.abs(bar_pixels - VIRIDIS_LOW).sum(1).min() < 30 and np.abs(bar_pixels - VIRIDIS_HIGH).sum(1).min() < 30


def test_stiffness_figure_of_a_uniform_asset_and_bad_input(tmp_path):
    pts, _k = halves()
    stiffness_figure(pts, np.full(len(pts), 3.0), tmp_path / "uniform.png")  # an empty range still has a bar
    assert read_png(tmp_path / "uniform.png").std() > 10
    with pytest.raises(ValueError, match="anchors"):
        stiffness_figure(pts[:, :2], np.zeros(len(pts)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="512 anchors"):
        stiffness_figure(pts, np.zeros(3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="finite"):
        stiffness_figure(pts, np.full(len(pts), np.nan), tmp_path / "x.png")
    with pytest.raises(ValueError, match="up"):
        stiffness_figure(pts, np.zeros(len(pts)), tmp_path / "x.png", up=(0, 0, 0))
    assert not (tmp_path / "x.png").exists()


def test_stiffness_colors_are_the_viridis_ends_and_middle():
    c = stiffness_colors(np.array([2.0, 3.0, 4.0, 9.0]), vmin=2.0, vmax=4.0)
    assert c.dtype == np.uint8 and c.shape == (4, 3)
    assert np.abs(c[0].astype(int) - VIRIDIS_LOW).max() <= 1 and np.abs(c[2].astype(int) - VIRIDIS_HIGH).max() <= 1
    assert np.array_equal(c[3], c[2])  # beyond the range: the end colour
    assert np.abs(c[1].astype(int) - [33, 145, 140]).max() <= 2  # viridis(0.5), a teal
    assert np.array_equal(stiffness_colors(torch.tensor([5.0, 5.0])), stiffness_colors([5.0, 5.0]))
    with pytest.raises(ValueError, match="log_stiffness"):
        stiffness_colors([])
    with pytest.raises(ValueError, match="vmin <= vmax"):
        stiffness_colors([1.0], vmin=2.0, vmax=1.0)


def test_physics_figure_and_its_checks(tmp_path):
    k = np.random.default_rng(0).normal(3.0, 0.3, 200)
    path = physics_figure(k, kappa=1.5, k_neighbors=32, n_c=8, friction=0.3, path=tmp_path / "physics.png")
    img = read_png(path)
    assert img.std() > 10 and img.shape[1] > img.shape[0]
    # the histogram's bars take the stiffness colours: teal-ish middle bars are there
    teal = (np.abs(img - [33, 145, 140]).max(-1) < 40).sum()
    assert teal > 200
    physics_figure(k, kappa=-3.0, k_neighbors=4, n_c=4, friction=None, path=tmp_path / "no_ground.png")
    for kwargs, message in ((dict(n_c=40), "n_c"), (dict(friction=1.5), "friction"),
                            (dict(kappa=float("nan")), "kappa"), (dict(k_neighbors=0), "k_neighbors")):
        args = dict(log_stiffness=k, kappa=1.0, k_neighbors=32, n_c=8, friction=0.3, path=tmp_path / "bad.png")
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            physics_figure(**args)
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------ a run directory
METRICS = {
    "reconstruction": {"cd": 1.234, "emd": 0.0123, "psnr": 28.5, "ssim": 0.951},
    "future": {"cd": 3.5, "emd": 0.02, "psnr": 24.1, "ssim": 0.9},
    "baselines": {
        "hold": {"reconstruction": {"cd": 1.234, "emd": 0.0123, "psnr": 28.5, "ssim": 0.951},
                 "future": {"cd": 9.0, "emd": 0.05, "psnr": 20.0, "ssim": 0.85}},
        "single_k": {"reconstruction": {"cd": 2.0, "emd": None, "psnr": 27.0, "ssim": 0.94},
                     "future": {"cd": 4.0, "emd": 0.03, "psnr": 23.0, "ssim": 0.88}},
    },
    "settings": {"fit_frames": 20, "n_frames": 30, "image_scale": 0.5},
}


def small_asset():
    import dataclasses

    from conftest import make_asset
    from pipeline.data.gaussians import Gaussians
    from taichi_sim.spring_params import SpringParams

    side = torch.linspace(-0.05, 0.05, 4)
    anchors = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    anchors[:, 1] += 0.1
    g = Gaussians(means=anchors.clone(), log_scales=torch.full((64,), math.log(0.01)), colors=torch.rand(64, 3),
                  opacity_logits=torch.zeros(64))
    asset = make_asset(anchors, g, k_neighbors=8, n_c=3, substeps=10, velocity=(0.1, 0.0, 0.0), n_b=1)
    params = SpringParams(torch.where(anchors[:, 0] < 0, 2.0, 4.0), torch.tensor(0.7), torch.tensor(0.0))
    return dataclasses.replace(asset, params=params, info={"n_frames": 30, "fit_frames": 20, "data": "/data/torus",
                                                           "image_scale": 0.5})


def write_video(path: Path, colour, frames: int = 6):
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imgs = [np.full((32, 64, 3), colour, np.uint8) for _ in range(frames)]
    for i, im in enumerate(imgs):
        im[:, 8 * i:8 * i + 8] = 255
    imageio.mimwrite(path, imgs, fps=10, macro_block_size=1)


def full_run(root: Path) -> Path:
    """A run directory with every part the report shows."""
    import yaml
    from matplotlib.figure import Figure

    from pipeline.asset import save_asset

    run = root / "run"
    save_asset(run / "asset", small_asset())
    (run / "settings.yaml").write_text(yaml.safe_dump({"settings": {"k_neighbors": 8, "iterations": 40,
                                                                    "lr": {"stiffness": 0.01}},
                                                       "data": "/data/torus"}))
    fig = Figure(figsize=(4, 3))
    fig.subplots().plot(np.exp(-np.linspace(0, 3, 50)))
    fig.savefig(run / "loss.png")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(METRICS))
    write_video(run / "eval" / "video_cam_00.mp4", (200, 40, 40))
    write_video(run / "simulations" / "zero gravity" / "video.mp4", (40, 200, 40))
    write_video(root / "elsewhere" / "video.mp4", (40, 40, 200))
    record_simulation(run, "zero gravity", run / "simulations" / "zero gravity" / "video.mp4",
                      edits={"gravity": 0.0, "ground_height": None, "no_ground": False, "stiffness_scale": 1.0})
    record_simulation(run, "outside", root / "elsewhere" / "video.mp4")
    (run / "figures").mkdir()
    fig.savefig(run / "figures" / "extra.png")
    return run


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> Links:
    p = Links()
    p.feed(page)
    return p


def test_report_page_links_only_existing_files_of_the_run(tmp_path):
    run = full_run(tmp_path)
    path = report_run(run)
    assert path == run / "report.html"
    page = path.read_text()
    tags = parse(page).tags
    media = [(t, a["src"]) for t, a in tags if t in ("img", "video")]
    urls = [a[k] for _t, a in tags for k in ("src", "href") if k in a]
    assert urls and not [u for u in urls if re.match(r"(?i)\s*(https?:|//|file:|data:)", u)]
    for _t, src in media:
        from urllib.parse import unquote

        assert not src.startswith("/") and ".." not in src
        assert (run / unquote(src)).is_file(), src
    assert sorted(src for t, src in media if t == "video") == ["eval/video_cam_00.mp4",
                                                               "simulations/zero%20gravity/video.mp4"]
    assert sorted(src for t, src in media if t == "img") == ["figures/extra.png", "figures/physics.png",
                                                             "figures/stiffness.png", "loss.png"]
    assert all("controls" in a for t, a in tags if t == "video")
    for href in (a["href"] for t, a in tags if t == "a"):
        assert href.startswith("#") and f'id="{href[1:]}"' in page  # in-page navigation only
    # self-contained: no script, no external stylesheet, no CSS fetches
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "url(" not in page and "@import" not in page
    # the numbers are on the page
    assert "28.50" in page and "0.951" in page and "Spring-Gaus, single k" in page
    assert "kappa" in page and "0.7" in page and "ground friction" in page and "0.5" in page
    assert "/data/torus" in page and "lr.stiffness" in page
    assert "gravity = 0" in page  # the simulation's edit, not its defaults
    assert "outside this run directory" in page  # named, not linked
    assert (run / "figures" / "stiffness.png").is_file() and (run / "figures" / "physics.png").is_file()


def test_missing_parts_are_left_out(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty, **collect_run(empty)).read_text()
    assert "<img" not in page and "<video" not in page and "nothing to show" in page
    # an asset alone: the physics, no metrics, no videos, no loss
    run = tmp_path / "run"
    from pipeline.asset import save_asset

    save_asset(run / "asset", small_asset())
    page = report_run(run).read_text()
    srcs = [a["src"] for t, a in parse(page).tags if t in ("img", "video")]
    assert sorted(srcs) == ["figures/physics.png", "figures/stiffness.png"]
    assert 'id="metrics"' not in page and 'id="loss"' not in page and 'id="simulations"' not in page
    assert 'id="physics"' in page and 'id="data"' in page
    # a listed simulation whose video was deleted is mentioned, never linked
    record_simulation(run, "gone", run / "sims" / "gone.mp4")
    page = report_run(run, figures=False).read_text()
    assert "gone.mp4" in page and "is missing" in page and "<video" not in page


def test_write_report_refuses_links_that_would_break(tmp_path):
    run = full_run(tmp_path)
    for bad, message in ((str(run / "loss.png"), "relative"), ("../run/loss.png", "relative"),
                         ("https://example.org/a.png", "relative"), ("//cdn/a.png", "relative"),
                         ("nope.png", "does not exist")):
        with pytest.raises(ValueError, match=message):
            write_report(run, loss_images=[bad])
    with pytest.raises(ValueError, match="reconstruction"):
        write_report(run, metrics={"future": {}})
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nothing")
    (run / "eval" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: malformed JSON"):
        collect_run(run)


def test_metrics_table_marks_the_best_value_of_each_column():
    page = metrics_table(METRICS)
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    assert len(rows) == 5  # two header rows, sgaus, hold, single k
    cells = [re.findall(r'<td class="([^"]*)">([^<]*)</td>', r) for r in rows[2:]]
    ours, hold, single = cells
    assert [v for _c, v in ours] == ["1.23", "0.012", "28.50", "0.951", "3.50", "0.020", "24.10", "0.900"]
    assert all("best" in c for c, _v in ours[4:])  # ours is best on every future metric
    assert "best" in hold[0][0] and "best" in ours[0][0]  # a tie is bold on both
    assert single[1] == ("num", "–")  # EMD missing
    assert "best" not in hold[4][0]


def test_suite_index_links_each_report(tmp_path):
    runs = []
    for name in ("torus", "pawn"):
        run = tmp_path / "suite" / name
        run.mkdir(parents=True)
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(METRICS))
        write_report(run, **collect_run(run))
        runs.append(run)
    index = write_suite_index(tmp_path / "suite", [suite_row(r) for r in runs] + [
        {"name": "by hand", "report": "torus/report.html", "note": "same run", "extra": {"seed": 3}}])
    page = index.read_text()
    links = [a["href"] for t, a in parse(page).tags if t == "a"]
    assert links == ["torus/report.html", "pawn/report.html", "torus/report.html"]
    assert all((tmp_path / "suite" / h).is_file() for h in links)
    assert "recon PSNR ↑" in page and "28.5" in page and "extra.seed" in page and "same run" in page
    with pytest.raises(ValueError, match="does not exist"):
        write_suite_index(tmp_path / "suite", [{"name": "x", "report": "missing/report.html"}])
    with pytest.raises(ValueError, match="'name' and a 'report'"):
        write_suite_index(tmp_path / "suite", [{"report": "torus/report.html"}])


def test_record_simulation_replaces_an_entry_of_the_same_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    record_simulation(run, "a", run / "a" / "video.mp4", edits={"gravity": 0.0})
    record_simulation(run, "b", tmp_path / "b.mp4")
    record_simulation(run, "a", run / "a2" / "video.mp4")
    sims = json.loads((run / "simulations.json").read_text())["simulations"]
    assert [s["name"] for s in sims] == ["b", "a"]
    assert sims[1] == {"name": "a", "video": "a2/video.mp4"}
    assert Path(sims[0]["video"]).is_absolute()
    with pytest.raises(ValueError, match="name"):
        record_simulation(run, " ", run / "x.mp4")


# ------------------------------------------------------------------ written by the commands
def local_links(page: str) -> list[str]:
    """Every src and href of the page that is not an in-page anchor, unquoted."""
    from urllib.parse import unquote

    return [unquote(a[k]) for _t, a in parse(page).tags for k in ("src", "href") if k in a and not a[k].startswith("#")]


def test_eval_and_simulate_update_the_run_report(tiny_run, tmp_path):
    import imageio.v2 as imageio

    from conftest import invoke

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval", ignore_errors=True)  # whatever other tests did to the shared run
    r = invoke("eval", run, "--no-baselines", "--quiet")
    assert r.exit_code == 0, r.output
    page = (run / "report.html").read_text()
    links = local_links(page)
    assert links and all((run / link).is_file() for link in links), links
    videos = sorted(p.relative_to(run).as_posix() for p in (run / "eval").glob("video_*.mp4"))
    assert len(videos) == 1 and videos[0] in links
    assert {"figures/stiffness.png", "figures/physics.png", "loss.png"} <= set(links)
    assert 'id="metrics"' in page and "Spring-Gaus (sgaus)" in page
    # the prediction (right half) stands on the grey ground checker; the recording is left as it was
    frame = imageio.get_reader(run / videos[0]).get_data(0).astype(float) / 255
    w = frame.shape[1] // 2
    grey = lambda img: ((img.max(-1) - img.min(-1) < 0.03) & (img.mean(-1) > 0.25)).mean()  # noqa: E731
    assert grey(frame[:, w:]) > 0.2 > grey(frame[:, :w])

    # a simulation inside the run joins the page; one outside it leaves the page alone
    r = invoke("simulate", run, "--frames", 3, "--size", 32, "--quiet", "--gravity", "0", "--out", run / "sims" / "zero g")
    assert r.exit_code == 0, r.output
    page = (run / "report.html").read_text()
    links = local_links(page)
    assert "sims/zero g/video.mp4" in links and all((run / link).is_file() for link in links)
    assert "gravity = 0" in page and 'id="metrics"' in page
    r = invoke("simulate", run, "--frames", 3, "--size", 32, "--quiet", "--out", tmp_path / "outside")
    assert r.exit_code == 0, r.output
    assert (run / "report.html").read_text() == page


# ------------------------------------------------------------------ headless Chromium
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


PROBE = """<script>
window.addEventListener('load', () => {
  const mark = (el, ok) => el.setAttribute('data-loaded', ok ? 'yes' : 'no');
  for (const img of document.images) mark(img, img.complete && img.naturalWidth > 0);
  for (const v of document.querySelectorAll('video')) {
    const check = () => mark(v, v.readyState >= 1 && v.videoWidth > 0 && !v.error);
    if (v.readyState >= 1) check();
    v.addEventListener('loadedmetadata', check);
    v.addEventListener('error', () => mark(v, false));
    v.load();
  }
});
</script>"""


def test_report_browser_renders_and_loads_every_picture_and_video(tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or `make test-browser`)")
    run = full_run(tmp_path)
    report = report_run(run)
    flags = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--mute-audio",
             "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
                   cwd=tmp_path, capture_output=True, timeout=120, check=True)
    img = read_png(shot)
    assert img.shape[:2] == (2000, 1200)
    assert img.std() > 20, "the screenshot is blank"
    # the stiffness picture is drawn: its purple and yellow points are on the screen
    assert (np.abs(img - VIRIDIS_LOW).max(-1) < 30).sum() > 100
    assert (np.abs(img - VIRIDIS_HIGH).max(-1) < 30).sum() > 100

    # a copy of the page beside it, with a probe that marks each picture and video once loaded
    probe = run / "report_probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run(flags + ["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    tags = [(t, a) for t, a in parse(out.stdout).tags if t in ("img", "video")]
    assert len(tags) == 6
    failed = [a.get("src") for _t, a in tags if a.get("data-loaded") != "yes"]
    assert not failed, f"did not load in Chromium: {failed}"
