"""`sgaus suite`: a suite of two tiny scenes x two methods (plus a method that fails at run time)
on a local Ray with two workers, its tables, --resume on an existing cluster (--address),
retries of a failing task, SPEC validation as one clear line, and the tables' seed averaging.

One suite run is shared by the tests of this module (module-scoped fixtures)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli import cli
from pipeline import suite as S

ROOT = Path(__file__).resolve().parents[1]
TINY_VIDEO = dict(views=3, frames=8, fit_frames=6, resolution=48, grid=32, drop_height=0.1)
# the tiny preset, shortened further: these tests check the orchestration, not the fit's quality
QUICK = {"iterations": 2, "static_iterations": 30, "refine_iterations": 5, "velocity_iterations": 3}
SPEC = {
    "name": "tiny",
    "seeds": [0],
    "scenes": [
        {"name": "ball", "shape": "sphere", "seed": 1, **TINY_VIDEO},
        {"name": "ring", "shape": "torus", "youngs_modulus": "2e4", **TINY_VIDEO},
    ],
    "methods": [
        {"name": "full", "preset": "tiny", "set": QUICK},
        {"name": "single_k", "preset": "tiny", "single_k": True, "set": QUICK},
        # valid as a setting, impossible on an 8-frame video: fails at run time, in every attempt
        {"name": "broken", "preset": "tiny", "fit_frames": 40, "set": QUICK},
    ],
}
OK_TASKS = [(s, m) for s in ("ball", "ring") for m in ("full", "single_k")]
BROKEN_TASKS = [(s, "broken") for s in ("ball", "ring")]


def attempts(out: Path, scene: str, method: str) -> int:
    log = out / "logs" / scene / method / "seed0.log"
    return sum(line.split(" ", 1)[1].startswith(S.ATTEMPT_MARK) for line in log.read_text().splitlines())


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def suite_run(spec_file, tmp_path_factory):
    """The suite on a local Ray with two workers (started and stopped by sgaus)."""
    import ray

    out = tmp_path_factory.mktemp("suite") / "out"
    t0 = time.perf_counter()
    try:
        r = CliRunner().invoke(cli, ["--arch", "cpu", "suite", str(spec_file), "--out", str(out), "--workers", "2"])
    finally:
        if ray.is_initialized():  # sgaus shuts its Ray down itself; this only guards a crash of the test
            ray.shutdown()
    assert not ray.is_initialized()
    return out, r, time.perf_counter() - t0


def test_suite_writes_tables_in_the_papers_layout(suite_run):
    out, r, _ = suite_run
    assert r.exit_code == 1, r.output  # the broken method's tasks failed, the others finished
    assert "2 of 6 tasks failed" in r.output
    assert "(raylet)" not in r.output and "INFO" not in r.output  # Ray stays out of the terminal
    doc = json.loads((out / "table.json").read_text())
    assert doc["scenes"] == ["ball", "ring"] and doc["methods"] == ["full", "single_k", "broken"]
    assert doc["seeds"] == [0] and "mean over the seeds" in doc["note"]
    rows = [row["row"] for row in doc["rows"]]
    # baselines where evaluated: the single-k ablation has no single-k baseline of its own
    assert rows == ["full", "hold (from full)", "single k (from full)", "single_k", "hold (from single_k)", "broken"]
    assert list(doc["table"]) == [k for k, *_ in S.METRICS]
    for key, block in doc["table"].items():
        for row in rows:
            cells = block["rows"][row]
            assert set(cells["scenes"]) == {"ball", "ring"}
            if row == "broken":
                assert cells["mean"] is None and all(c is None for c in cells["scenes"].values())
            else:
                assert all(c["n"] == 1 for c in cells["scenes"].values()), (key, row)
                means = [c["mean"] for c in cells["scenes"].values()]
                assert cells["mean"] == pytest.approx(sum(means) / 2)
    tasks = {(t["scene"], t["method"]): t for t in doc["tasks"]}
    assert len(doc["tasks"]) == 6
    for key in OK_TASKS:
        t = tasks[key]
        assert t["status"] == "ok" and t["fit_s"] > 0 and t["eval_s"] > 0
        assert set(t) >= {"scene", "method", "seed", "status", "metrics", "fit_s", "eval_s", "run"}
        assert (out / t["run"] / "eval" / "metrics.json").is_file() and (out / t["run"] / "asset").is_dir()
        assert t["metrics"]["future"]["cd"] == doc["table"]["future_cd"]["rows"][key[1]]["scenes"][key[0]]["mean"]
    md = (out / "table.md").read_text()
    assert "| metric | method | ball | ring | mean |" in md
    for _k, _p, _m, label, _d, _l in S.METRICS:
        assert f"| {label} | full |" in md
    assert "One seed (0): nothing is averaged over seeds" in md and "| hold (from full) |" in md
    assert (out / "table.png").stat().st_size > 1000
    # the resolved SPEC saved with the suite is a SPEC of the same tasks
    assert [t.key for t in S.load_spec(out / "suite.yaml").tasks()] == [
        t.key for t in S.parse_spec(SPEC, out, "SPEC").tasks()]
    # each scene generated once, into data/<scene>-<hash>/
    assert sorted(p.name.rsplit("-", 1)[0] for p in (out / "data").iterdir()) == ["ball", "ring"]
    for scene in ("ball", "ring"):
        assert (out / "logs" / scene / "generate.log").read_text().count(S.ATTEMPT_MARK) == 1


def test_a_failing_task_is_retried_once_then_reported(suite_run):
    out, r, _ = suite_run
    doc = json.loads((out / "table.json").read_text())
    tasks = {(t["scene"], t["method"]): t for t in doc["tasks"]}
    for key in BROKEN_TASKS:
        t = tasks[key]
        assert t["status"] == "failed" and t["metrics"] is None
        assert t["error"] == "SgausError: cannot fit 40 frames of a video with 8 frames (need 2 or more)"
        assert attempts(out, *key) == 2  # the first try and Ray's one retry
    for key in OK_TASKS:
        assert attempts(out, *key) == 1
    md = (out / "table.md").read_text()
    assert "| ball | broken | 0 | failed | - | - | SgausError: cannot fit 40 frames" in md
    assert "failed: ball/broken/seed0: SgausError: cannot fit 40 frames" in r.output


def test_run_task_without_ray(suite_run, spec_file):
    out, _, _ = suite_run
    task = next(t for t in S.load_spec(spec_file).tasks() if (t.scene.name, t.method.name) == ("ball", "broken"))
    with pytest.raises(ValueError, match="cannot fit 40 frames"):
        S.run_task(task, out, "cpu")
    assert attempts(out, "ball", "broken") == 3


@pytest.fixture(scope="module")
def resumed(suite_run, spec_file):
    """--resume of the same SPEC on an existing Ray cluster (--address), from another process."""
    import ray

    out, _, _ = suite_run
    runs = [out / "runs" / s / m / "seed0" for s, m in OK_TASKS]
    before = {p: (p / "eval" / "metrics.json").stat().st_mtime_ns for p in runs}
    data_before = sorted(p.name for p in (out / "data").iterdir())
    logs_before = {k: attempts(out, *k) for k in OK_TASKS + BROKEN_TASKS}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        address = ray.get_runtime_context().gcs_address
        proc = subprocess.run(
            [sys.executable, "-c", "from cli import main; main()", "--arch", "cpu", "suite", str(spec_file),
             "--out", str(out), "--resume", "--address", address],
            cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        ray.shutdown()
    return out, proc, before, data_before, logs_before


def test_resume_reruns_nothing_finished(resumed):
    out, proc, before, data_before, logs_before = resumed
    assert proc.returncode == 1, proc.stdout + proc.stderr  # only the broken tasks ran again, and failed
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "(raylet)" not in text and "INFO" not in text
    assert "4 finished earlier" in proc.stdout and "2 task(s) on the Ray cluster at" in proc.stdout
    for run, mtime in before.items():
        assert (run / "eval" / "metrics.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (out / "data").iterdir()) == data_before
    for key in OK_TASKS:
        assert attempts(out, *key) == logs_before[key]
    for key in BROKEN_TASKS:
        assert attempts(out, *key) == logs_before[key] + 2
    doc = json.loads((out / "table.json").read_text())
    assert doc["summary"] == {"tasks": 6, "ok": 4, "failed": 2, "reused": 4}
    assert all(t["reused"] for t in doc["tasks"] if t["status"] == "ok")


def test_a_changed_setting_changes_only_its_tasks_keys(spec_file, tmp_path):
    spec = yaml.safe_load(spec_file.read_text())
    spec["methods"][0]["set"] = {**QUICK, "iterations": 3}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(spec))
    a = {t.label: t.key for t in S.load_spec(spec_file).tasks()}
    b = {t.label: t.key for t in S.load_spec(other).tasks()}
    assert {k for k in a if a[k] != b[k]} == {"ball/full/seed0", "ring/full/seed0"}


BAD_SPECS = [
    ({"methods": [{"name": "full", "preset": "tiny", "colour": "red"}]}, "method 'full': unknown method option 'colour'"),
    ({"methods": [{"name": "full", "preset": "tiny", "set": {"colour": "red"}}]}, "method 'full': unknown setting 'colour'"),
    ({"methods": [{"name": "full", "preset": "quick"}]}, "unknown preset 'quick'"),
    ({"methods": [{"name": "full", "seed": 3}]}, "the seed comes from the suite's seeds list"),
    ({"scenes": [{"name": "mine", "path": "no/such/dataset"}]}, "scene 'mine': dataset not found:"),
    ({"scenes": [{"name": "s", "shape": "torus", "colour": "red"}]}, "scene 's': unknown generate-mpm option 'colour'"),
    ({"scenes": [{"name": "s", "shape": "teapot"}]}, "scene 's': unknown shape 'teapot'"),
    ({"scenes": [{"name": "s", "views": "many"}]}, "scene 's': views must be a number"),
    ({"scenes": [{"name": "s"}, {"name": "s", "shape": "cross"}]}, "scene names are repeated: s"),
    ({"methods": [{"name": "m"}, {"name": "m", "single_k": True}]}, "method names are repeated: m"),
    ({"seeds": [0, "one"]}, "seeds must be non-negative integers"),
    ({"runs": 3}, "unknown suite option 'runs'"),
]


@pytest.mark.parametrize("change,message", BAD_SPECS, ids=[m.split(":")[0][:40] for _, m in BAD_SPECS])
def test_a_bad_spec_is_one_clear_line_before_anything_starts(tmp_path, change, message):
    import ray

    spec = {"seeds": [0], "scenes": [{"name": "s", "shape": "torus"}], "methods": [{"name": "m", "preset": "tiny"}],
            **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["--arch", "cpu", "suite", str(path), "--out", str(out)])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert not out.exists() and not ray.is_initialized()


@pytest.mark.parametrize("args,message", [
    ([], "give a suite SPEC file or --builtin NAME"),
    (["missing.yaml"], "suite SPEC not found: missing.yaml"),
    (["BAD_YAML"], "not valid YAML"),
    (["--builtin", "ablation", "SPEC"], "give a suite SPEC file or --builtin NAME"),
    (["--builtin", "ablation", "--workers", "0"], "--workers must be at least 1"),
    (["--builtin", "ablation", "--address", "nonsense"], "--address must be auto or HOST:PORT, got 'nonsense'"),
    (["--builtin", "ablation", "--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
])
def test_bad_command_lines_are_one_clear_line(tmp_path, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes: [unclosed\n")
    args = [str(bad) if a == "BAD_YAML" else (str(bad) if a == "SPEC" else a) for a in args]
    r = CliRunner().invoke(cli, ["suite", *args, "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.output
    assert not (tmp_path / "out").exists()


def test_builtin_suites():
    paper = S.builtin_spec("paper-synthetic")
    shapes = [s.options["shape"] or Path(s.options["mesh"]).name for s in paper.scenes]
    assert shapes == ["torus", "banana", "spot.obj", "pawn", "cross", "letter_s", "letter_t", "letter_l"]
    moduli = [s.options["youngs_modulus"] for s in paper.scenes]
    assert moduli == sorted(moduli) and moduli[0] == 1e4 and moduli[-1] == 1e6
    for s in paper.scenes:
        assert (s.options["views"], s.options["frames"], s.options["fit_frames"]) == (10, 30, 20)
    assert [m.name for m in paper.methods] == ["spring_gaus"] and paper.methods[0].preset == "fast"
    ablation = S.builtin_spec("ablation")
    assert [s.options["heterogeneous"] for s in ablation.scenes] == [True]
    assert {m.name: m.overrides for m in ablation.methods} == {
        "full": {}, "no_soft_vector": {"soft_vector": False}, "single_k": {"single_k": True}}
    # the CLI offers exactly the built-in suites
    choices = next(p for p in cli.commands["suite"].params if p.name == "builtin").type.choices
    assert tuple(choices) == S.BUILTINS


def test_tables_average_seeds_and_mark_missing_ones(tmp_path):
    spec = {"seeds": [0, 1], "scenes": [{"name": "a", "shape": "torus"}, {"name": "b", "shape": "cross"}],
            "methods": [{"name": "m", "preset": "tiny"}], "baselines": False}
    suite = S.parse_spec(spec, tmp_path)

    def rec(scene, seed, cd):
        part = {"cd": cd, "emd": 0.01, "psnr": 20.0, "ssim": 0.9}
        return {"scene": scene, "method": "m", "seed": seed, "status": "ok", "run": f"runs/{scene}/m/seed{seed}",
                "metrics": {"reconstruction": part, "future": part, "baselines": {}}, "fit_s": 1.0, "eval_s": 1.0}

    failed = {"scene": "b", "method": "m", "seed": 1, "status": "failed", "run": "runs/b/m/seed1",
              "error": "RuntimeError: boom", "metrics": None}
    doc = S.write_tables(suite, [rec("a", 0, 1.0), rec("a", 1, 3.0), rec("b", 0, 5.0), failed], tmp_path)
    cells = doc["table"]["future_cd"]["rows"]["m"]
    assert cells["scenes"]["a"] == {"mean": 2.0, "std": 1.0, "n": 2}
    assert cells["scenes"]["b"]["n"] == 1 and cells["mean"] == pytest.approx(3.5)
    md = (tmp_path / "table.md").read_text()
    assert "| future CD ↓ | m | 2.000 | 5.000 † | 3.500 |" in md
    assert "mean over seeds 0, 1" in md and "RuntimeError: boom" in md
    assert [row["row"] for row in doc["rows"]] == ["m"]  # no baselines evaluated, no baseline rows


def test_arch_follows_the_clusters_gpus(monkeypatch):
    assert S._resolve_arch("auto", {"CPU": 2.0}, local=False) == "cpu"
    assert S._resolve_arch("auto", {"CPU": 2.0, "GPU": 1.0}, local=False) == "cuda"
    with pytest.raises(ValueError, match="the Ray cluster has no GPU"):
        S._resolve_arch("cuda", {"CPU": 2.0}, local=False)
    # a local GPU that this machine's torch cannot use (a CPU build) is not chosen by auto
    monkeypatch.setattr(S._api(), "cuda_available", lambda: False)
    assert S._resolve_arch("auto", {"GPU": 1.0}, local=True) == "cpu"
    with pytest.raises(ValueError, match="no CUDA device is available to torch"):
        S._resolve_arch("cuda", {"GPU": 1.0}, local=True)
