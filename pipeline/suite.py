"""`sgaus suite`: scenes x methods x seeds, each an independent task run on Ray, gathered into
tables laid out like the paper's Tables 1-3.

A suite SPEC (YAML) lists

* ``scenes``: generate-mpm options as a mapping (``{name: soft_torus, shape: torus,
  youngs_modulus: 1e4, views: 4, frames: 12, resolution: 64}``), or an existing dataset
  (``{name: x, path: existing/dataset}``);
* ``methods``: ``{name: full, preset: fast, set: {iterations: 20}}``; any fit setting may also be
  given directly (``single_k: true``, ``soft_vector: false``, ``truncate_per_frame: true``) and
  ``config`` names a settings YAML file as in ``sgaus fit --config``;
* ``seeds``: integers, each passed to the fit as its ``seed`` setting (default ``[0]``);
* ``baselines``: evaluate the hold and single-k baselines with every task (default true);
* ``name``, ``description``: for the tables.

Relative paths in a SPEC (``path``, ``mesh``, ``config``) are read from the SPEC's directory, those
of the built-in SPECs (pipeline/suites/*.yaml) from the sgaus source directory. The whole SPEC is
checked before anything starts; a bad one raises SgausError with one line naming what is wrong.

Every (scene, method, seed) is a task: generate the scene (once per scene, cached under
OUT/data/<scene>-<hash>/), fit it into OUT/runs/<scene>/<method>/seed<k>/ and evaluate it there.
A finished task leaves OUT/runs/.../suite_task.json with its key (a hash of the scene's options
or dataset files, the method's settings and the seed); with ``resume`` a task whose eval/metrics.json
and recorded key match is not run again. Tasks run on a local Ray started here (or an existing
cluster), one CPU each (and one GPU with arch cuda), each in a fresh worker process with its own
Taichi runtime, retried once when they fail. :func:`run_task` runs one task without Ray.
Results are gathered into OUT/table.md, OUT/table.json and OUT/table.png.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import yaml

from taichi_sim.errors import SgausError

SUITE_FORMAT = "sgaus-suite/1"
TABLE_FORMAT = "sgaus-suite-table/1"
BUILTIN_DIR = Path(__file__).resolve().with_name("suites")
SOURCE_ROOT = Path(__file__).resolve().parents[1]
BUILTINS = ("paper-synthetic", "ablation")
TASK_RECORD = "suite_task.json"
ATTEMPT_MARK = "=== attempt"

SUITE_KEYS = ("name", "description", "seeds", "baselines", "scenes", "methods")
METHOD_KEYS = ("name", "preset", "config", "set")
# generate-mpm's option names that differ from GenerateConfig's fields
GENERATE_ALIASES = {"rotate": "rotation_deg", "material": "model"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@functools.cache
def _api() -> SimpleNamespace:
    """The pipeline entry points this module calls, imported in this one place (their modules
    may move; nothing else here imports from the pipeline)."""
    from pipeline.data.files import atomic_file, check_output_dir, write_json, write_text
    from pipeline.data.schema import read_yaml
    from pipeline.evaluate import evaluate
    from pipeline.fit.runner import fit
    from pipeline.fit.settings import FitSettings, make_settings
    from pipeline.generate import GenerateConfig, generate
    from taichi_sim.runtime import cuda_available, current_arch, init_taichi

    return SimpleNamespace(atomic_file=atomic_file, check_output_dir=check_output_dir, read_yaml=read_yaml,
                           write_json=write_json,
                           write_text=write_text, evaluate=evaluate,
                           fit=fit, GenerateConfig=GenerateConfig, generate=generate, FitSettings=FitSettings,
                           make_settings=make_settings, current_arch=current_arch, init_taichi=init_taichi,
                           cuda_available=cuda_available)


def _hash(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- the SPEC
@dataclasses.dataclass(frozen=True)
class Scene:
    """One scene: generated (``options``: GenerateConfig fields) or an existing dataset (``path``)."""

    name: str
    options: dict | None
    path: str | None
    key: str

    @property
    def generated(self) -> bool:
        return self.path is None

    def data_dir(self, out_dir) -> Path:
        return Path(out_dir) / "data" / f"{self.name}-{self.key}" if self.generated else Path(self.path)

    def config(self):
        cfg = _api().GenerateConfig(**self.options)
        cfg.validate()
        return cfg


@dataclasses.dataclass(frozen=True)
class Method:
    """One method: a preset and overrides, resolved into every fit setting but the seed."""

    name: str
    preset: str
    overrides: dict
    settings: dict


@dataclasses.dataclass(frozen=True)
class Task:
    """One (scene, method, seed): where it writes and the key that says what it computes."""

    scene: Scene
    method: Method
    seed: int
    baselines: bool
    key: str

    @property
    def label(self) -> str:
        return f"{self.scene.name}/{self.method.name}/seed{self.seed}"

    @property
    def run_rel(self) -> str:
        return f"runs/{self.scene.name}/{self.method.name}/seed{self.seed}"

    @property
    def log_rel(self) -> str:
        return f"logs/{self.scene.name}/{self.method.name}/seed{self.seed}.log"

    @property
    def settings(self) -> dict:
        return {**self.method.settings, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    scenes: tuple
    methods: tuple
    seeds: tuple
    baselines: bool
    source: str

    def tasks(self) -> list[Task]:
        return [Task(sc, m, seed, self.baselines, task_key(sc, m, seed, self.baselines))
                for sc in self.scenes for m in self.methods for seed in self.seeds]

    def to_dict(self) -> dict:
        """The SPEC as resolved (absolute paths, every option), saved as OUT/suite.yaml; it is a
        SPEC itself, whose tasks have the same keys."""
        scenes = []
        for sc in self.scenes:
            options = {"path": sc.path} if sc.path else {k: list(v) if isinstance(v, tuple) else v
                                                         for k, v in sc.options.items() if v is not None}
            scenes.append({"name": sc.name, **options})
        methods = [{"name": m.name, "preset": m.preset, "set": dict(m.overrides)} for m in self.methods]
        return {"name": self.name, "description": self.description, "seeds": list(self.seeds),
                "baselines": self.baselines, "scenes": scenes, "methods": methods}


def task_key(scene: Scene, method: Method, seed: int, baselines: bool) -> str:
    """What a task computes: the scene's options (or dataset files), every fit setting, the seed."""
    from pipeline.fit.settings import NOT_IN_KEYS

    settings = {k: v for k, v in method.settings.items() if k not in NOT_IN_KEYS}  # they change no result
    return _hash(SUITE_FORMAT, scene.key, {**settings, "seed": seed}, int(seed), bool(baselines))


def _check_name(value, where: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise SgausError(f"{where}: a name of letters, digits, '_', '.' or '-' is required, got {value!r}")
    return value


def _resolve(path, base_dir: Path) -> Path:
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (base_dir / p)


def _number(value, kind, name: str, where: str):
    """YAML reads 1e4 as a string (its floats need a dot): accept numbers written either way."""
    if isinstance(value, bool):
        raise SgausError(f"{where}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SgausError(f"{where}: {name} must be a number, got {value!r}") from None
    if kind is int:
        if not number.is_integer():
            raise SgausError(f"{where}: {name} must be a whole number, got {value!r}")
        return int(number)
    return number


def _generate_options(raw: dict, base_dir: Path, where: str) -> tuple[dict, str]:
    """generate-mpm options (CLI names or GenerateConfig fields) -> validated fields and their key."""
    GenerateConfig = _api().GenerateConfig
    fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
    defaults = GenerateConfig()
    known = sorted(set(fields) | set(GENERATE_ALIASES))
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        name = GENERATE_ALIASES.get(name, name)
        if name not in fields:
            raise SgausError(f"{where}: unknown generate-mpm option {key!r} (known: {', '.join(known)}, or path)")
        if name in out:
            raise SgausError(f"{where}: option {key!r} is given twice")
        default = getattr(defaults, name)
        if name in ("shape", "mesh", "model", "ground"):
            if not isinstance(value, str):
                raise SgausError(f"{where}: {key} must be a name, got {value!r}")
            value = str(_resolve(value, base_dir)) if name == "mesh" else value
        elif isinstance(default, bool):  # heterogeneous, shading
            if not isinstance(value, bool):
                raise SgausError(f"{where}: {key} must be true or false, got {value!r}")
        elif isinstance(default, tuple):
            parts = value.split(",") if isinstance(value, str) else value
            if not isinstance(parts, (list, tuple)) or len(parts) != 3:
                raise SgausError(f"{where}: {key} must be three numbers x,y,z, got {value!r}")
            value = tuple(_number(p, float, key, where) for p in parts)
        else:
            kind = int if name == "fit_frames" or isinstance(default, int) else float
            value = _number(value, kind, key, where)
        out[name] = value
    if "shape" in out and "mesh" in out:
        raise SgausError(f"{where}: shape and mesh exclude each other")
    if "mesh" in out:
        out["shape"] = None
    cfg = GenerateConfig(**out)
    try:
        cfg.validate()
    except (SgausError, FileNotFoundError) as err:
        raise SgausError(f"{where}: {str(err).splitlines()[0]}") from None
    options = cfg.to_dict()
    identity = dict(options)
    if cfg.mesh is not None:  # the mesh's content, not where it lies, says what is generated
        identity["mesh"] = hashlib.sha256(Path(cfg.mesh).read_bytes()).hexdigest()
    return options, _hash(SUITE_FORMAT, "generate", identity)


def _dataset_fingerprint(root: Path) -> str:
    """Names, sizes and modification times of a dataset's files (a replaced file changes it)."""
    items = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            items.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return _hash(SUITE_FORMAT, "dataset", items)


def _scene(i: int, raw, base_dir: Path) -> Scene:
    if not isinstance(raw, dict):
        raise SgausError(f"scenes[{i}] must be a mapping of generate-mpm options (or name and path), got {raw!r}")
    name = _check_name(raw.get("name"), f"scenes[{i}] name")
    where = f"scene {name!r}"
    rest = {k: v for k, v in raw.items() if k != "name"}
    if "path" in rest:
        if len(rest) > 1:
            others = ", ".join(sorted(str(k) for k in rest if k != "path"))
            raise SgausError(f"{where}: an existing dataset (path) takes no generate-mpm options ({others})")
        if not isinstance(rest["path"], str) or not rest["path"]:
            raise SgausError(f"{where}: path must be a directory, got {rest['path']!r}")
        path = _resolve(rest["path"], base_dir).resolve()
        if not path.exists():
            raise SgausError(f"{where}: dataset not found: {path}")
        if not path.is_dir():
            raise SgausError(f"{where}: the dataset path is not a directory: {path}")
        return Scene(name, None, str(path), _dataset_fingerprint(path))
    options, key = _generate_options(rest, base_dir, where)
    return Scene(name, options, None, key)


def _method(i: int, raw, base_dir: Path) -> Method:
    api = _api()
    fields = {f.name for f in dataclasses.fields(api.FitSettings)}
    if not isinstance(raw, dict):
        raise SgausError(f"methods[{i}] must be a mapping (name, preset, set, or fit settings), got {raw!r}")
    name = _check_name(raw.get("name"), f"methods[{i}] name")
    where = f"method {name!r}"
    for key in raw:
        if key not in METHOD_KEYS and key not in fields:
            raise SgausError(f"{where}: unknown method option {key!r} (options: {', '.join(METHOD_KEYS)}, "
                             "or a fit setting such as single_k, soft_vector, truncate_per_frame, iterations)")
    preset = raw.get("preset", "fast")
    sets = raw.get("set") or {}
    if not isinstance(sets, dict):
        raise SgausError(f"{where}: set must be a mapping of setting: value, got {sets!r}")
    direct = {k: v for k, v in raw.items() if k not in METHOD_KEYS}
    for k in sets:
        if k in direct and direct[k] != sets[k]:
            raise SgausError(f"{where}: setting {k!r} is given twice (directly and in set)")
    overrides = {**direct, **sets}
    if "seed" in overrides:
        raise SgausError(f"{where}: the seed comes from the suite's seeds list, not from a method")
    config = raw.get("config")
    if config is not None:
        config = _resolve(config, base_dir)
    try:
        settings = api.make_settings(str(preset), config, overrides)
    except (SgausError, FileNotFoundError) as err:
        raise SgausError(f"{where}: {str(err).splitlines()[0]}") from None
    values = settings.to_dict()
    values.pop("seed")
    # what the method changes from its preset, for the record (the key uses every setting)
    base = api.make_settings(str(preset)).to_dict()
    changed = {k: v for k, v in values.items() if base[k] != v}
    return Method(name, str(preset), changed, values)


def _seeds(raw) -> tuple:
    raw = [0] if raw is None else raw
    raw = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(raw, list) or not raw:
        raise SgausError(f"seeds must be a non-empty list of integers, got {raw!r}")
    for s in raw:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise SgausError(f"seeds must be non-negative integers, got {s!r}")
    if len(set(raw)) != len(raw):
        raise SgausError(f"seeds are repeated: {raw}")
    return tuple(raw)


def parse_spec(data, base_dir: str | Path, source: str = "SPEC", default_name: str = "suite") -> Suite:
    """Validate a SPEC mapping completely (scenes, methods, seeds) and resolve it into a :class:`Suite`."""
    base_dir = Path(base_dir)
    if not isinstance(data, dict):
        raise SgausError(f"{source}: a suite is a mapping with scenes, methods and seeds")
    for key in data:
        if key not in SUITE_KEYS:
            raise SgausError(f"{source}: unknown suite option {key!r} (options: {', '.join(SUITE_KEYS)})")
    try:
        for part in ("scenes", "methods"):
            if not isinstance(data.get(part), list) or not data[part]:
                raise SgausError(f"{part} must be a non-empty list")
        baselines = data.get("baselines", True)
        if not isinstance(baselines, bool):
            raise SgausError(f"baselines must be true or false, got {baselines!r}")
        name = data.get("name", default_name)
        if not isinstance(name, str) or not name.strip():
            raise SgausError(f"name must be a text, got {name!r}")
        seeds = _seeds(data.get("seeds"))
        scenes = tuple(_scene(i, s, base_dir) for i, s in enumerate(data["scenes"]))
        methods = tuple(_method(i, m, base_dir) for i, m in enumerate(data["methods"]))
        for kind, items in (("scene", scenes), ("method", methods)):
            names = [x.name for x in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise SgausError(f"{kind} names are repeated: {', '.join(dup)}")
    except ValueError as err:
        raise SgausError(f"{source}: {err}") from None
    return Suite(name.strip(), str(data.get("description") or ""), scenes, methods, seeds, baselines, source)


def load_spec(path: str | Path) -> Suite:
    """Read and validate a SPEC file (relative paths inside it are read from its directory)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite SPEC not found: {path}")
    return parse_spec(_api().read_yaml(path, None), path.resolve().parent, str(path), default_name=path.stem)


def builtin_spec(name: str) -> Suite:
    """A built-in suite (pipeline/suites/<name>.yaml; relative paths from the sgaus source directory)."""
    if name not in BUILTINS:
        raise SgausError(f"unknown built-in suite {name!r} (choose {', '.join(BUILTINS)})")
    path = BUILTIN_DIR / f"{name}.yaml"
    return parse_spec(_api().read_yaml(path, None), SOURCE_ROOT, f"built-in suite {name}", default_name=name)


# ----------------------------------------------------------------------------- one task
class _TaskLog:
    """A task's log file under OUT/logs/ (Ray's worker output is not shown without --verbose)."""

    def __init__(self, path: Path, prefix: str, echo: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", buffering=1)
        self.prefix, self.echo = prefix, echo

    def __call__(self, *parts) -> None:
        text = " ".join(str(p) for p in parts)
        for line in text.splitlines() or [""]:
            self.fh.write(f"{datetime.now().strftime('%H:%M:%S')} {line}\n")
            if self.echo:
                print(f"[{self.prefix}] {line}", flush=True)

    def close(self) -> None:
        self.fh.close()


def _start_taichi(arch: str) -> None:
    api = _api()
    current = api.current_arch()
    if current is None or (arch != "auto" and arch != current):
        api.init_taichi(arch)


def ensure_data(scene: Scene, out_dir, arch: str = "cpu", log=None) -> Path:
    """The scene's dataset: an existing one, or generated once into OUT/data/<scene>-<hash>/."""
    target = scene.data_dir(out_dir)
    if not scene.generated or (target / "scene.json").is_file():
        return target
    _start_taichi(arch)
    if log:
        log(f"generating {scene.name} into {target}")
    return _api().generate(scene.config(), target, progress=False, log=log)


def finished_record(task: Task, out_dir) -> dict | None:
    """The record of a finished task whose key matches (what ``resume`` keeps), else None."""
    run = Path(out_dir) / task.run_rel
    rec_path = run / TASK_RECORD
    if not (run / "eval" / "metrics.json").is_file() or not rec_path.is_file():
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("key") != task.key or rec.get("status") != "ok":
        return None
    return rec


def run_task(task: Task, out_dir, arch: str = "cpu", *, resume: bool = False, verbose: bool = False) -> dict:
    """Generate (when not cached), fit and evaluate one task in this process; returns its record
    (also written to OUT/runs/.../suite_task.json, which marks the task finished). Exceptions
    propagate. ``resume`` lets the fit reuse its saved stages (their own keys decide)."""
    api = _api()
    out = Path(out_dir).resolve()
    run = out / task.run_rel
    (run / TASK_RECORD).unlink(missing_ok=True)  # not finished until this attempt says so
    log = _TaskLog(out / task.log_rel, task.label, verbose)
    try:
        log(f"{ATTEMPT_MARK} started {_now()} on {socket.gethostname()} (pid {os.getpid()}), arch {arch}, "
            f"key {task.key}")
        _start_taichi(arch)
        data = ensure_data(task.scene, out, arch, log)
        settings = api.make_settings("fast", overrides=task.settings)
        t0 = time.perf_counter()
        api.fit(data, run, settings, resume=resume, overwrite=not resume, progress=False, log=log)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = api.evaluate(run, baselines=task.baselines, progress=False, log=log)
        eval_s = time.perf_counter() - t0
        record = {"format": SUITE_FORMAT, "key": task.key, "scene": task.scene.name, "method": task.method.name,
                  "seed": task.seed, "status": "ok", "metrics": metrics, "fit_s": round(fit_s, 2),
                  "eval_s": round(eval_s, 2), "run": task.run_rel, "data": str(data), "finished": _now(),
                  "host": socket.gethostname()}
        api.write_json(run / TASK_RECORD, record)
        log(f"finished: fit {fit_s:.1f} s, eval {eval_s:.1f} s")
        return record
    except BaseException as err:
        log(f"failed: {type(err).__name__}: {err}")
        raise
    finally:
        log.close()


# ----------------------------------------------------------------------------- Ray
def _limit_threads(cpus: int) -> None:
    """Keep a task to the CPUs it asked Ray for (Taichi's and torch's thread pools)."""
    os.environ["TI_CPU_MAX_NUM_THREADS"] = str(cpus)
    os.environ["OMP_NUM_THREADS"] = str(cpus)
    import torch

    torch.set_num_threads(cpus)


def _generate_in_worker(scene: Scene, out_dir: str, arch: str, verbose: bool, cpus: int) -> str:
    _limit_threads(cpus)
    log = _TaskLog(Path(out_dir) / "logs" / scene.name / "generate.log", f"{scene.name}/generate", verbose)
    try:
        log(f"{ATTEMPT_MARK} started {_now()} on {socket.gethostname()} (pid {os.getpid()}), arch {arch}")
        path = ensure_data(scene, out_dir, arch, log)
        log("finished")
        return str(path)
    except BaseException as err:
        log(f"failed: {type(err).__name__}: {err}")
        raise
    finally:
        log.close()


def _task_in_worker(task: Task, out_dir: str, arch: str, resume: bool, verbose: bool, cpus: int,
                    data: str | None = None) -> dict:
    # ``data`` is the generate task's result: passing its ObjectRef makes this task wait for it
    _limit_threads(cpus)
    return run_task(task, out_dir, arch, resume=resume, verbose=verbose)


def error_line(err: BaseException) -> str:
    """The last line of a task's error ("ValueError: ..."), from Ray's wrapper when there is one."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    name = type(err).__name__
    if name.startswith("RayTaskError(") and name.endswith(")"):
        name = name[len("RayTaskError("):-1]
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if not last:
        return name
    return last if last.startswith(name) else f"{name}: {last}"


def _quiet_ray(verbose: bool) -> int:
    """Keep Ray's own messages out of the terminal unless ``verbose``; returns the logging level."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if verbose:  # every task's lines, not one of each kind (read when ray is first imported)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    return logging.INFO if verbose else logging.ERROR


def _route_ray_errors(path: Path, verbose: bool):
    """Ray's driver prints the errors its raylet publishes ("Task ... failed. There are 1 retries
    remaining ...", dead workers) to the terminal even without log_to_driver. Append them to
    ``path`` instead, and show them only when ``verbose``. Returns a function undoing this.
    (Ray offers no switch for it; when its internals change this leaves the printing alone.)"""
    try:
        import ray._private.worker as ray_worker
    except ImportError:
        return lambda: None
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None:
        return lambda: None

    def routed(data, *args, **kwargs):
        if isinstance(data, dict) and data.get("pid") == "raylet":
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a") as fh:
                    fh.write(f"--- {_now()}\n" + "\n".join(str(x) for x in data.get("lines", [])) + "\n")
            except OSError:
                pass
            if not verbose:
                return None
        return original(data, *args, **kwargs)

    ray_worker.print_to_stdstream = routed

    def undo():
        ray_worker.print_to_stdstream = original

    return undo


def _resolve_arch(arch: str, resources: dict, local: bool) -> str:
    """auto: CUDA when the cluster has GPUs (and, on a local Ray, when torch here can use one)."""
    gpus = float(resources.get("GPU", 0))
    torch_cuda = _api().cuda_available() if local else True
    if arch == "auto":
        return "cuda" if gpus >= 1 and torch_cuda else "cpu"
    if arch == "cuda" and (gpus < 1 or not torch_cuda):
        raise SgausError("--arch cuda was asked for, but the Ray cluster has no GPU" if gpus < 1 else
                         "--arch cuda was asked for, but no CUDA device is available to torch")
    return arch


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT (or ray://HOST:PORT), None for auto; ValueError for anything else."""
    if address == "auto":
        return None
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SgausError(f"--address must be auto or HOST:PORT, got {address!r}")
    return host, int(port)


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would retry it for minutes)."""
    target = _host_port(address)
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise SgausError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}") from None


def _start_ray(address: str | None, workers: int | None, verbose: bool) -> str:
    level = _quiet_ray(verbose)
    import ray

    common = dict(log_to_driver=verbose, logging_level=level, configure_logging=True)
    try:
        if address:
            ray.init(address=address, **common)
            return f"the Ray cluster at {address}"
        # the workers run the same sgaus as this driver (an editable install elsewhere must not win)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT)] + ([old] if old else []))
        try:
            ray.init(address="local", num_cpus=workers, include_dashboard=False, **common)
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old
        return f"a local Ray with {workers} worker{'s' if workers != 1 else ''}"
    except (ConnectionError, RuntimeError, ValueError) as err:
        what = f"the Ray cluster at {address}" if address else "a local Ray"
        msg = str(err).strip().splitlines()
        raise SgausError(f"could not start or reach {what}: {msg[0] if msg else type(err).__name__}") from None


def _run_on_ray(tasks: list[Task], out: Path, *, address, workers, arch, resume, verbose, progress, log,
                bar_total: int, bar_done: int) -> dict:
    """Run ``tasks`` on Ray; returns {label: record} (failed tasks as status "failed")."""
    _quiet_ray(verbose)
    import ray
    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    undo = _route_ray_errors(out / "logs" / "ray_errors.log", verbose)
    try:
        where = _start_ray(address, workers, verbose)
    except BaseException:
        undo()
        raise
    try:
        arch = _resolve_arch(arch, ray.cluster_resources(), local=not address)
        gpus = 1 if arch == "cuda" else 0
        log(f"running {len(tasks)} task(s) on {where} (arch {arch}); task logs in {out / 'logs'}")
        retry = dict(max_retries=1, retry_exceptions=True, max_calls=1)  # a fresh process (and Taichi) per task
        gen_remote = ray.remote(**retry)(_generate_in_worker).options(num_cpus=1, num_gpus=gpus)
        task_remote = ray.remote(**retry)(_task_in_worker).options(num_cpus=1, num_gpus=gpus)
        gen_refs = {}
        for t in tasks:
            sc = t.scene
            if sc.generated and sc.name not in gen_refs and not (sc.data_dir(out) / "scene.json").is_file():
                gen_refs[sc.name] = gen_remote.remote(sc, str(out), arch, verbose, 1)

        def gen_error(scene: str) -> str | None:
            ref = gen_refs.get(scene)
            if ref is None:
                return None
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                return None
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - any failure of the generation is reported
                return error_line(err)
            return None

        limit = workers if (address and workers) else len(tasks)
        queue = list(tasks)
        in_flight: dict = {}
        bar = tqdm(total=bar_total, initial=bar_done, desc="suite", unit="task", disable=not progress,
                   dynamic_ncols=True)
        failed = 0
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    t = queue.pop(0)
                    dep = gen_refs.get(t.scene.name)
                    ref = task_remote.remote(t, str(out), arch, resume, verbose, 1, dep)
                    in_flight[ref] = t
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    t = in_flight.pop(ref)
                    try:
                        results[t.label] = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a failed task is reported, the others go on
                        gen = gen_error(t.scene.name)
                        line = f"generating scene {t.scene.name} failed: {gen}" if gen else error_line(err)
                        results[t.label] = _failed_record(t, line)
                        failed += 1
                        bar.write(f"failed: {t.label}: {line}")
                        bar.set_postfix(failed=failed)
                    bar.update(1)
        finally:
            bar.close()
    finally:
        ray.shutdown()
        undo()
    return results


def _failed_record(task: Task, error: str) -> dict:
    return {"format": SUITE_FORMAT, "key": task.key, "scene": task.scene.name, "method": task.method.name,
            "seed": task.seed, "status": "failed", "metrics": None, "fit_s": None, "eval_s": None,
            "run": task.run_rel, "error": error}


def run_suite(suite: Suite, out_dir, *, address: str | None = None, workers: int | None = None, arch: str = "auto",
              resume: bool = False, verbose: bool = False, progress: bool = True, log=print) -> dict:
    """Run every task of ``suite`` (finished ones are kept with ``resume``) on Ray and write
    OUT/table.md, table.json and table.png; returns table.json's content."""
    if workers is not None and workers < 1:
        raise SgausError(f"--workers must be at least 1, got {workers}")
    if arch not in ("auto", "cpu", "cuda"):
        raise SgausError(f"unknown arch {arch!r}: choose auto, cpu or cuda")
    if address is not None:
        _host_port(address)
    _api().check_output_dir(out_dir, "suite", allow_existing=True)  # a suite directory is updated task by task
    out = Path(out_dir).resolve()
    tasks = suite.tasks()
    results: dict[str, dict] = {}
    if resume:
        for t in tasks:
            rec = finished_record(t, out)
            if rec is not None:
                results[t.label] = {**rec, "reused": True}
    todo = [t for t in tasks if t.label not in results]
    if todo and address:
        _probe(address)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    _api().write_json(out / "suite.json", {"format": "sgaus-suite/1", "name": suite.name})
    _api().write_text(out / "suite.yaml", yaml.safe_dump(suite.to_dict(), sort_keys=False))
    log(f"suite {suite.name}: {len(suite.scenes)} scene(s) x {len(suite.methods)} method(s) x {len(suite.seeds)} "
        f"seed(s) = {len(tasks)} task(s)" + (f", {len(results)} finished earlier" if results else ""))
    if todo:
        if workers is None and not address:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        results.update(_run_on_ray(todo, out, address=address, workers=workers, arch=arch, resume=resume,
                                   verbose=verbose, progress=progress, log=log, bar_total=len(tasks),
                                   bar_done=len(tasks) - len(todo)))
    return write_tables(suite, [results[t.label] for t in tasks], out)


# ----------------------------------------------------------------------------- tables
# (key in table.json, part of metrics.json, metric, row label, digits, lower is better)
METRICS = (
    ("future_cd", "future", "cd", "future CD ↓", 3, True),
    ("future_emd", "future", "emd", "future EMD ↓", 4, True),
    ("future_psnr", "future", "psnr", "future PSNR ↑", 2, False),
    ("future_ssim", "future", "ssim", "future SSIM ↑", 3, False),
    ("recon_cd", "reconstruction", "cd", "recon. CD ↓", 3, True),
    ("recon_emd", "reconstruction", "emd", "recon. EMD ↓", 4, True),
    ("recon_psnr", "reconstruction", "psnr", "recon. PSNR ↑", 2, False),
    ("recon_ssim", "reconstruction", "ssim", "recon. SSIM ↑", 3, False),
)
BASELINE_LABELS = {"hold": "hold", "single_k": "single k"}


def _rows(suite: Suite, records: list[dict]) -> list[dict]:
    """One row per method, then its baselines where some task evaluated them."""
    rows = []
    for m in suite.methods:
        rows.append({"row": m.name, "method": m.name, "baseline": None})
        found = set()
        for r in records:
            if r["method"] == m.name and r.get("metrics"):
                found.update(r["metrics"].get("baselines", {}))
        for b in [b for b in BASELINE_LABELS if b in found] + sorted(found - set(BASELINE_LABELS)):
            rows.append({"row": f"{BASELINE_LABELS.get(b, b)} (from {m.name})", "method": m.name, "baseline": b})
    return rows


def _value(metrics: dict, baseline: str | None, part: str, metric: str):
    src = metrics if baseline is None else metrics.get("baselines", {}).get(baseline)
    v = (src or {}).get(part, {}).get(metric)
    return float(v) if v is not None and math.isfinite(v) else None


def _cells(suite: Suite, rows: list[dict], records: list[dict]) -> dict:
    table = {}
    for key, part, metric, label, digits, lower in METRICS:
        block = {}
        for row in rows:
            cells = {}
            for sc in suite.scenes:
                vals = [v for r in records if r["scene"] == sc.name and r["method"] == row["method"]
                        and r["status"] == "ok" and r.get("metrics")
                        for v in [_value(r["metrics"], row["baseline"], part, metric)] if v is not None]
                if vals:
                    mean = sum(vals) / len(vals)
                    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
                    cells[sc.name] = {"mean": mean, "std": std, "n": len(vals)}
                else:
                    cells[sc.name] = None
            present = [c["mean"] for c in cells.values() if c is not None]
            mean = sum(present) / len(present) if present and len(present) == len(suite.scenes) else None
            block[row["row"]] = {"scenes": cells, "mean": mean}
        table[key] = {"label": label, "part": part, "metric": metric, "lower_is_better": lower, "digits": digits,
                      "rows": block}
    return table


def _seeds_text(seeds) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {', '.join(str(s) for s in seeds)}"


def _fmt(v, digits) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _markdown(suite: Suite, rows: list[dict], table: dict, records: list[dict], summary: dict) -> str:
    n_seeds = len(suite.seeds)
    seeds = ", ".join(str(s) for s in suite.seeds)
    head = ["metric", "method"] + [sc.name for sc in suite.scenes] + ["mean"]
    lines = [f"# Suite {suite.name}", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    lines += [
        f"{len(suite.scenes)} scene(s) x {len(suite.methods)} method(s) x {n_seeds} seed(s) = "
        f"{summary['tasks']} task(s): {summary['ok']} finished ({summary['reused']} kept from an earlier run), "
        f"{summary['failed']} failed.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for key, _part, _metric, label, digits, lower in METRICS:
        block = table[key]["rows"]
        best = {}
        for sc in [s.name for s in suite.scenes] + ["mean"]:
            vals = [(block[r["row"]]["mean"] if sc == "mean" else (block[r["row"]]["scenes"][sc] or {}).get("mean"))
                    for r in rows]
            shown = {f"{v:.{digits}f}" for v in vals if v is not None}
            if len(shown) >= 2:  # bold the best only where the rows differ
                best[sc] = min(v for v in vals if v is not None) if lower else max(v for v in vals if v is not None)
        for i, row in enumerate(rows):
            cells = []
            for sc in suite.scenes:
                c = block[row["row"]]["scenes"][sc.name]
                if c is None:
                    cells.append("-")
                    continue
                text = _fmt(c["mean"], digits)
                if best.get(sc.name) is not None and f"{c['mean']:.{digits}f}" == f"{best[sc.name]:.{digits}f}":
                    text = f"**{text}**"
                cells.append(text + (" †" if c["n"] < n_seeds else ""))
            m = block[row["row"]]["mean"]
            mtext = _fmt(m, digits)
            if m is not None and best.get("mean") is not None and f"{m:.{digits}f}" == f"{best['mean']:.{digits}f}":
                mtext = f"**{mtext}**"
            lines.append("| " + " | ".join([label if i == 0 else "", row["row"]] + cells + [mtext]) + " |")
    lines += [
        "",
        (f"Each value is the mean over seeds {seeds} (the {n_seeds} seeds averaged per scene and method); † marks "
         "a mean over fewer seeds because some tasks failed, - a value that is missing. " if n_seeds > 1 else
         f"One seed ({seeds}): nothing is averaged over seeds; - marks a value that is missing. ")
        + "Mean: over the scenes (only when every "
        "scene has a value). Best of each column in bold. recon. = dynamic reconstruction, the mean over the fitted "
        "frames 1..F-1; future = future prediction, the mean over the frames after them (sgaus eval). CD: "
        "squared-distance Chamfer distance in 1e3 mm² (scene unit = 1 m); EMD: mean matched distance in m; both "
        "against the ground truth's surface particles. PSNR (dB) and SSIM over every camera."
        + (" hold: the method's fit frozen after its last fitted frame; single k: its dynamic stage refitted with "
           "one global stiffness." if any(r["baseline"] for r in rows) else ""),
        "",
        "## Tasks",
        "",
        "| scene | method | seed | status | fit s | eval s | run or error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        status = r["status"] + (" (kept)" if r.get("reused") else "")
        where = r.get("error") if r["status"] != "ok" else r["run"]
        where = (where or "").replace("|", "\\|")
        lines.append(f"| {r['scene']} | {r['method']} | {r['seed']} | {status} | {_fmt(r.get('fit_s'), 1)} | "
                     f"{_fmt(r.get('eval_s'), 1)} | {where} |")
    return "\n".join(lines) + "\n"


def _plot(suite: Suite, table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    api = _api()
    scenes = [s.name for s in suite.scenes]
    methods = [m.name for m in suite.methods]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(scenes) * 2 + 2), 3.8), squeeze=False)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(scenes))
    for ax, key in zip(axes[0], ("future_cd", "future_psnr")):
        block = table[key]["rows"]
        for i, m in enumerate(methods):
            cells = [block[m]["scenes"][s] for s in scenes]
            means = [c["mean"] if c else np.nan for c in cells]
            stds = [c["std"] if c and c["n"] > 1 else 0.0 for c in cells]
            ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds if any(stds) else None, label=m, capsize=2)
        ax.set_xticks(x)
        ax.set_xlim(-0.6, len(scenes) - 0.4)
        ax.set_xticklabels(scenes, rotation=30 if len(scenes) > 3 else 0, ha="right" if len(scenes) > 3 else "center")
        ax.set_title(table[key]["label"] + (" (1e3 mm²)" if key == "future_cd" else " (dB)"))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    spread = " (error bars: standard deviation over the seeds)" if len(suite.seeds) > 1 else ""
    fig.suptitle(f"suite {suite.name}: {_seeds_text(suite.seeds)}{spread}", fontsize=10)
    fig.tight_layout()
    with api.atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_tables(suite: Suite, records: list[dict], out_dir) -> dict:
    """OUT/table.json (every cell and every task), OUT/table.md (paper layout), OUT/table.png."""
    api = _api()
    out = Path(out_dir)
    rows = _rows(suite, records)
    table = _cells(suite, rows, records)
    summary = {"tasks": len(records), "ok": sum(r["status"] == "ok" for r in records),
               "failed": sum(r["status"] != "ok" for r in records),
               "reused": sum(bool(r.get("reused")) for r in records)}
    tasks = [{"scene": r["scene"], "method": r["method"], "seed": r["seed"], "status": r["status"],
              "metrics": r.get("metrics"), "fit_s": r.get("fit_s"), "eval_s": r.get("eval_s"), "run": r["run"],
              "error": r.get("error"), "reused": bool(r.get("reused")), "key": r.get("key")} for r in records]
    doc = {
        "format": TABLE_FORMAT,
        "suite": suite.name,
        "seeds": list(suite.seeds),
        "note": (f"every value is the mean over the seeds {list(suite.seeds)} whose task finished (n counts them, "
                 "std is their standard deviation); 'mean' is the mean over the scenes, null unless every scene "
                 "has a value"),
        "scenes": [s.name for s in suite.scenes],
        "methods": [m.name for m in suite.methods],
        "rows": rows,
        "table": table,
        "summary": summary,
        "tasks": tasks,
    }
    api.write_json(out / "table.json", doc)
    api.write_text(out / "table.md", _markdown(suite, rows, table, records, summary))
    _plot(suite, table, out / "table.png")
    return doc
