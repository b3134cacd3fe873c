"""Stage cache keys: every field of a stage's settings dataclass is part of its key, and every
user-facing setting reaches some stage's settings, so `--resume` cannot reuse stale work."""
import dataclasses

import pytest

from pipeline.fit.runner import stage_key
from pipeline.fit.settings import NOT_IN_KEYS, FitSettings, make_settings


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.125
    if isinstance(value, str):
        return value + "_other"
    if value is None:
        return 1
    if isinstance(value, tuple):
        return tuple(_other(v) for v in value)
    raise TypeError(f"no other value for {value!r}")


def _variants(settings):
    """(path, changed settings) for every leaf field, nested dataclasses included."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            for path, inner in _variants(value):
                yield f"{f.name}.{path}", dataclasses.replace(settings, **{f.name: inner})
        else:
            yield f.name, dataclasses.replace(settings, **{f.name: _other(value)})


def _stages(s: FitSettings):
    from pipeline.fit.capture_settings import capture_settings

    return {"static": s.static(0.5), "anchors": s.anchors(), "refine": s.refine(), "velocity": s.velocity(6),
            "global": s.global_search_settings(), "dynamic": s.dynamic(), "capture": capture_settings(s)}


@pytest.mark.parametrize("name", ["static", "anchors", "refine", "velocity", "global", "dynamic", "capture"])
def test_changing_any_stage_setting_changes_the_stage_key(name):
    settings = _stages(make_settings("fast"))[name]
    base = stage_key(name, "parent", settings)
    assert stage_key(name, "parent", settings) == base
    assert stage_key(name, "other parent", settings) != base
    seen = 0
    for path, changed in _variants(settings):
        assert stage_key(name, "parent", changed) != base, f"{name}: {path} is not part of the cache key"
        seen += 1
    assert seen >= 3


# settings that reach the fit through the scene facts or the image scale (part of the root key)
# rather than through a stage's settings, and the switch that runs the global stage at all
ROOT_SETTINGS = {"image_size", "fit_frames", "velocity_frames", "global_search"}


def test_every_fit_setting_reaches_a_stage(tmp_path):
    import numpy as np

    np.save(tmp_path / "points.npy", np.zeros((4, 3)))  # anchor_points: the file is read for its digest
    base = make_settings("fast")
    stages = _stages(base)
    for f in dataclasses.fields(FitSettings):
        if f.name in ROOT_SETTINGS or f.name in NOT_IN_KEYS:
            continue
        value = getattr(base, f.name)
        choices = {"force_law": ("smooth", "paper"), "friction_mode": ("per_time", "per_substep"),
                   "dense_start_offsets": ("0", "0,0.3")}
        other = next(c for c in choices[f.name] if c != value) if f.name in choices else _other(value)
        other = str(tmp_path / "points.npy") if f.name == "anchor_points" else other
        changed = _stages(dataclasses.replace(base, **{f.name: other}))
        assert changed != stages, f"the setting {f.name} changes no stage's settings (and so no cache key)"


def test_checkpoint_settings_change_no_stage_key():
    """When a stage saves its state changes nothing it computes: a run checkpointed every
    iteration, or never, reuses the stages and checkpoints of one checkpointed every 2 minutes."""
    assert set(NOT_IN_KEYS) == {"checkpoint_s", "checkpoint_every"}
    base = _stages(make_settings("fast"))
    changed = _stages(make_settings("fast", overrides={"checkpoint_s": 0.5, "checkpoint_every": 3}))
    for name in base:
        assert stage_key(name, "parent", changed[name]) == stage_key(name, "parent", base[name]), name


def test_paper_preset_renders_as_many_views_as_the_authors_loops():
    """The authors' static loop renders one random view per iteration and their velocity and
    dynamic loops one camera per frame; the fast preset keeps its own batches."""
    paper, fast = make_settings("paper"), make_settings("fast")
    assert paper.static(1.0).views_per_iteration == 1 and paper.velocity(3).cameras == 1
    assert paper.dynamic().cameras_per_frame == 1
    assert fast.static(1.0).views_per_iteration == 4 and fast.velocity(3).cameras == 2


def test_paper_preset_keeps_the_authors_counts():
    """Their config: velocity 100 iterations; dynamic 300 iterations at 100 substeps per frame,
    raised by 50 at iterations 100 and 200 (N_STEP_ITER); the fast preset never raises."""
    paper = make_settings("paper")
    assert paper.velocity(3).iterations == 100
    d = paper.dynamic()
    assert (d.iterations, d.substeps, d.substeps_raise_every) == (300, 100, 100)
    assert make_settings("fast").dynamic().substeps_raise_every == 0
