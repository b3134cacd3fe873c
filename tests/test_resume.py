"""A fit killed with SIGKILL anywhere resumes from its checkpoints and ends bitwise where an
uninterrupted fit ends (on the CPU); one writer per run directory, a dead writer's lock taken over.

The fits run as separate processes of the CLI (a real SIGKILL, a real second process) on the tiny
scene with a still smaller budget: 32-pixel images, 50 static iterations (one densification, at
iteration 29) and a few iterations of every other stage."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from pipeline.data.runlock import lock_info
from pipeline.fit.checkpoint import KILL_ENV, Checkpoint, CheckpointPolicy

ROOT = Path(__file__).resolve().parents[1]
BUDGET = ["--preset", "tiny", "--quiet", "--image-size", 32, "--set", "static_iterations=50",
          "--set", "refine_iterations=8", "--set", "velocity_iterations=6", "--set", "global_grid_points=4",
          "--set", "global_cma_generations=1", "--set", "global_cma_population=3", "--set", "iterations=4"]
CHECKPOINTED = [*BUDGET, "--set", "checkpoint_every=2"]  # a checkpoint every other iteration
STAGE_FILES = {"static": "gaussians.ply", "anchors": "anchors.npz", "refine": "gaussians.ply",
               "velocity": "velocity.json", "global": "global.json", "dynamic": "fitted.json"}
OUTPUTS = [f"stages/{s}/{f}" for s, f in STAGE_FILES.items()] + [
    "asset/gaussians.ply", "asset/anchors.npz", "asset/physics.json"]
# where each stage is killed (iterations; evaluations for the global search): with a checkpoint every
# other iteration an odd point loses one iteration, recomputed on resume, an even one loses none
KILLS = {"static": 35, "refine": 5, "velocity": 4, "global": 6, "dynamic": 3}


def sgaus(*args, kill_at: str | None = None, wait: bool = True):
    """The CLI in a new process (completed, or running when not ``wait``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TI_SKIP_VERSION_CHECK": "on", "ENABLE_TAICHI_HEADER_PRINT": "0"}
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    cmd = [sys.executable, "-c", "from cli import main; main()", "--arch", "cpu", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_same_outputs(run: Path, reference: Path) -> None:
    """Every saved number identical: byte-equal files (PLY, npz, JSON written the same way)."""
    for rel in OUTPUTS:
        assert (run / rel).read_bytes() == (reference / rel).read_bytes(), f"{rel} differs from the uninterrupted fit"


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """An uninterrupted fit (checkpoints at the default interval, so none in so short a fit)."""
    run = tmp_path_factory.mktemp("resume") / "reference"
    r = sgaus("fit", tiny_data, "--out", run, *BUDGET)
    assert r.returncode == 0, r.stdout + r.stderr
    return run


@pytest.fixture(scope="module")
def killed_in_every_stage(tiny_data, tmp_path_factory):
    """One fit killed in the middle of each stage in turn, each time resumed with --resume: the run
    and, per stage, (exit status of the killed process, what it left, the output of the resume)."""
    run = tmp_path_factory.mktemp("resume") / "killed"
    steps = {}
    resume: list = []
    stages = list(KILLS)
    for i, stage in enumerate(stages):
        r = sgaus("fit", tiny_data, "--out", run, *CHECKPOINTED, *resume, kill_at=f"{stage}:{KILLS[stage]}")
        left = sorted(p.name for p in (run / "stages").iterdir())
        steps[stage] = {"returncode": r.returncode, "left": left}
        if i:
            steps[stages[i - 1]]["resumed"] = r.stdout
        resume = ["--resume"]
    r = sgaus("fit", tiny_data, "--out", run, *CHECKPOINTED, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    steps[stages[-1]]["resumed"] = r.stdout
    return run, steps


@pytest.mark.parametrize("stage", list(KILLS))
def test_a_stage_killed_midway_resumes_from_its_checkpoint_bitwise(stage, killed_in_every_stage, reference):
    run, steps = killed_in_every_stage
    step = steps[stage]
    assert step["returncode"] == -signal.SIGKILL
    assert f"{stage}.checkpoint" in step["left"] and stage not in step["left"]  # no half-written stage
    done = KILLS[stage] - KILLS[stage] % 2  # the last checkpoint before the kill
    assert f"{stage}: resuming from the checkpoint after iteration {done}" in step["resumed"]
    rel = f"stages/{stage}/{STAGE_FILES[stage]}"
    assert (run / rel).read_bytes() == (reference / rel).read_bytes(), f"{rel} differs from the uninterrupted fit"
    if stage == "static":  # the record of the number of Gaussians survives the kill (killed after the densification)
        counts = [json.loads((r / "stages/static/stage.json").read_text())["gaussian_counts"] for r in (run, reference)]
        assert counts[0] == counts[1] and counts[0][0][0] == 1 and len(counts[0]) >= 2, counts


def test_the_fit_killed_in_every_stage_ends_with_the_uninterrupted_asset(killed_in_every_stage, reference):
    run, _steps = killed_in_every_stage
    assert_same_outputs(run, reference)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert not list((run / "stages").glob("*.checkpoint"))  # removed once each stage's output was written
    assert not (run / ".sgaus.lock.json").exists()  # the lock was given back


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(reference, tiny_data, tmp_path):
    """A finished fit whose later stages were deleted: a fit --resume recomputing them is frozen while
    it holds the run's lock; a second fit, an eval and a simulate into the run are refused at once
    naming it; it is killed; a new fit --resume takes the stale lock over, ignores a checkpoint of
    other settings, and ends with the uninterrupted fit's asset (the recomputed stages start from
    what the earlier ones saved, as in the uninterrupted fit)."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for stage in ("velocity", "dynamic"):  # the global search stays: its key is its settings and velocity's key
        shutil.rmtree(run / "stages" / stage)
    # a checkpoint of the velocity stage under other settings (another key): never to be used
    stale = run / "stages" / "velocity.checkpoint"
    Checkpoint(stale, "velocity", "0" * 16).save(4, {"iteration": 4, "v0": [9.0, 9.0, 9.0]})
    first = sgaus("fit", tiny_data, "--out", run, *BUDGET, "--resume", wait=False)  # saves no checkpoint
    try:
        deadline = time.monotonic() + 120
        while (lock_info(run) or {}).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, "the first fit never took the lock"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)
        for args in (["fit", tiny_data, "--out", run, *BUDGET, "--resume"], ["eval", run, "--quiet"],
                     ["simulate", run, "--out", run / "sims" / "a", "--frames", 2, "--size", 32, "--quiet"]):
            for attempt in range(2):  # the first one also imports what the command needs
                start = time.process_time()
                r = invoke(*args)
                assert attempt == 0 or time.process_time() - start < 1.0, args[0]
                assert r.exit_code != 0 and "Traceback" not in r.output
                lines = [ln for ln in r.output.splitlines() if ln.strip()]
                assert len(lines) == 1 and lines[0].startswith("Error:"), r.output
                assert f"pid {first.pid} on " in lines[0] and "sgaus fit" in lines[0] and "started" in lines[0], lines[0]
        assert not (run / "sims").exists()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert lock_info(run)["pid"] == first.pid  # its record outlived it; its flock did not
    r = sgaus("fit", tiny_data, "--out", run, *BUDGET, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"took over the lock of {run.resolve()}: its holder, pid {first.pid}" in r.stdout
    assert "resuming" not in r.stdout and not stale.exists()  # the stale checkpoint ignored, then removed
    assert json.loads((run / "run.json").read_text())["stages_run"] == ["velocity", "dynamic"]
    assert_same_outputs(run, reference)
    assert lock_info(run) is None


def test_checkpoint_policy_and_unreadable_checkpoints(tmp_path):
    """Saved when the interval has passed or every N iterations; a checkpoint of another key, of
    another stage, or one that cannot be read is not restored (the stage starts over)."""
    path = tmp_path / "dynamic.checkpoint"
    c = Checkpoint(path, "dynamic", "k1", CheckpointPolicy(interval_s=3600, every=3), resume=True)
    for done in (1, 2):
        c.step(done, lambda: {"x": done})
    assert not path.exists()
    c.step(3, lambda: {"x": 3})
    assert Checkpoint(path, "dynamic", "k1", resume=True).restore() == {"x": 3}
    assert Checkpoint(path, "dynamic", "k1", resume=False).restore() is None
    assert Checkpoint(path, "dynamic", "k2", resume=True).restore() is None
    said = []
    assert Checkpoint(path, "static", "k1", resume=True, log=said.append).restore() is None
    path.write_bytes(b"not a checkpoint")
    assert Checkpoint(path, "dynamic", "k1", resume=True, log=said.append).restore() is None
    assert len(said) == 2 and "cannot be read" in said[1]
    timed = Checkpoint(path, "dynamic", "k1", CheckpointPolicy(interval_s=0.0), resume=True)
    timed.step(1, lambda: {"x": 1})
    assert Checkpoint(path, "dynamic", "k1", resume=True).restore() == {"x": 1}
    timed.discard()
    assert not path.exists()


def test_non_finite_stage_results_are_named(reference, tiny_data, tmp_path):
    """A NaN in a saved stage result is named with its file and anchor on --resume, never fitted on."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / "stages" / "dynamic" / "fitted.json"
    doc = json.loads(path.read_text())
    doc["log_stiffness"][3] = float("nan")
    path.write_text(json.dumps(doc))
    before = (run / "asset" / "physics.json").read_bytes()
    r = invoke("fit", tiny_data, "--out", run, *BUDGET, "--resume")
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code != 0 and len(lines) == 1, r.output
    assert "fitted.json" in lines[0] and "'log_stiffness' holds NaN at anchor 3" in lines[0]
    assert (run / "asset" / "physics.json").read_bytes() == before
    assert np.isfinite(json.loads(before)["log_stiffness"]).all()
