"""The ``sgaus`` command line: commands only; the work lives in taichi_sim/, render/, pipeline/.

Bad input (missing or malformed files, impossible parameters, an unstable simulation) raises
SgausError inside the library; here it becomes one line on stderr and a non-zero exit, without a
traceback. A file the system cannot open for us (missing, a directory, no permission) is told the
same way. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import os

import click

from pipeline.data.files import check_output_dir
from taichi_sim.errors import SgausError


class _Group(click.Group):
    """A click group that turns library errors into one clear line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (SgausError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
            msg = str(err) or err.__class__.__name__
            if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in msg:
                msg = f"{msg}: {err.filename}"
            raise click.ClickException(msg.splitlines()[0] if msg else msg) from None


def _taichi(ctx: click.Context) -> str:
    """Initialise Taichi with the group's --arch (the only place the CLI does so)."""
    from taichi_sim.runtime import current_arch, init_taichi

    if current_arch() is not None:  # already running (e.g. a test session): keep it
        return current_arch()
    return init_taichi(ctx.find_root().obj["arch"])


def _vec3(text, name: str) -> tuple[float, float, float]:
    from taichi_sim.spring_model import vec3

    return vec3(text, name)


class Numbers(click.ParamType):
    """Finite numbers: one (a float) or ``count`` of them separated by commas (a tuple), or one of
    ``words``. NaN and infinities are refused here, once for every numeric option, with one line
    naming the option and the value ("--velocity: nan is not a finite number"), before any file is
    read or any simulation starts."""

    def __init__(self, *counts: int, words: tuple[str, ...] = ()):
        self.counts, self.words = counts or (1,), words
        self.name = "number" if self.counts == (1,) else "numbers"

    def convert(self, value, param, ctx):
        opt = param.opts[0] if param is not None and param.opts else "value"
        if isinstance(value, (int, float, tuple)) and not isinstance(value, bool):  # a default, not text
            value = ",".join(map(repr, value)) if isinstance(value, tuple) else repr(float(value))
        text = str(value).strip()
        if text.lower() in self.words:
            return text.lower()
        parts = [p.strip() for p in text.split(",")]
        values = []
        for p in parts:
            try:
                values.append(float(p))
            except ValueError:
                raise SgausError(f"{opt}: {p!r} is not a number{self._expected()}") from None
        for p, v in zip(parts, values):
            if v != v or v in (float("inf"), float("-inf")):
                raise SgausError(f"{opt}: {p} is not a finite number")
        if len(values) not in self.counts:
            raise SgausError(f"{opt}: {text!r} has {len(values)} number(s){self._expected()}")
        return values[0] if len(values) == 1 and 1 in self.counts else tuple(values)

    def _expected(self) -> str:
        choices = [*self.words, *({1: "a number", 3: "three numbers x,y,z"}.get(n, f"{n} numbers") for n in self.counts)]
        return "; expected " + (", ".join(choices[:-1]) + " or " if len(choices) > 1 else "") + choices[-1]


FINITE = Numbers(1)
VECTOR3 = Numbers(3)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--arch",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=lambda: os.environ.get("SGAUS_ARCH", "auto"),
    show_default="auto (or $SGAUS_ARCH)",
    help="Taichi backend: auto uses CUDA when a GPU is present, else the CPU.",
)
@click.version_option("0.1.0", prog_name="sgaus")
@click.pass_context
def cli(ctx: click.Context, arch: str) -> None:
    """sgaus: reconstruct and simulate elastic objects with spring-mass 3D Gaussians.

    \b
    Typical use:
      sgaus generate-mpm --shape torus --out data/torus
      sgaus fit data/torus --out runs/torus
      sgaus eval runs/torus
      sgaus simulate runs/torus --gravity 0 --out sims/zero_g
    """
    ctx.ensure_object(dict)
    ctx.obj["arch"] = arch


# ---------------------------------------------------------------- reconstruct
@cli.command("reconstruct")
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--iterations", type=int, default=1500, show_default=True, help="Optimisation steps.")
@click.option("--scale", type=FINITE, default=0.003, show_default=True,
              help="The constant scale s0 of every Gaussian (scene units).")
@click.option("--image-size", type=int, default=128, show_default=True,
              help="Longest image side used, in pixels (0 = full resolution).")
@click.option("--n-init", type=int, default=2000, show_default=True, help="Initial Gaussians.")
@click.option("--init", "init", type=click.Choice(["hull", "box"]), default="hull", show_default=True,
              help="hull: inside the visual hull of the masks; box: anywhere in the box the cameras see.")
@click.option("--grad-threshold", type=FINITE, default=0.0005, show_default=True,
              help="Clone Gaussians whose mean view-space gradient (NDC) exceeds this.")
@click.option("--max-gaussians", type=int, default=200000, show_default=True, help="Cap on densification.")
@click.option("--views", "views_per_iteration", type=int, default=4, show_default=True,
              help="Views rendered per iteration.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--overwrite", is_flag=True, help="Replace a previous reconstruction in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def reconstruct_cmd(ctx, data, out, iterations, scale, image_size, n_init, init, grad_threshold, max_gaussians,
                    views_per_iteration, seed, overwrite, quiet):
    """Fit the static stage alone (paper Sec 4.1): isotropic Gaussians of constant scale fitted to frame 0
    of every view in DATA; writes OUT/gaussians.ply, OUT/settings.json and OUT/renders.png and
    prints the PSNR of every view."""
    from pipeline.fit.static import StaticSettings, reconstruct_to_dir

    if image_size < 0:
        raise click.BadParameter("--image-size must be 0 (full resolution) or positive")
    settings = StaticSettings(iterations=iterations, scale=scale, n_init=n_init, init=init,
                              grad_threshold=grad_threshold, max_gaussians=max_gaussians,
                              views_per_iteration=views_per_iteration, seed=seed)
    settings.validate()
    check_output_dir(out, "reconstruction", overwrite=overwrite, protect=[data])
    _taichi(ctx)
    reconstruct_to_dir(data, out, settings, image_size=image_size or None, progress=not quiet, log=click.echo)
    click.echo(f"wrote {out}/gaussians.ply, settings.json and renders.png")


# ---------------------------------------------------------------- generate-mpm
@cli.command("generate-mpm")
@click.option("--shape", default=None, metavar="NAME",
              help="Built-in shape: banana, box, cross, letter_l, letter_s, letter_t, pawn, sphere, torus "
                   "(default torus).")
@click.option("--mesh", default=None, type=click.Path(dir_okay=False), help="A mesh file open3d reads, instead of --shape.")
@click.option("--size", type=FINITE, default=0.4, show_default=True, help="Largest extent of the object, metres.")
@click.option("--rotate", type=VECTOR3, default="0,0,0", show_default=True, help="Rotation of the object at rest, Euler x,y,z degrees.")
@click.option("--drop-height", type=FINITE, default=0.25, show_default=True,
              help="Height of the object's lowest point at frame 0, metres.")
@click.option("--youngs-modulus", type=FINITE, default=5e4, show_default=True, help="Young's modulus E, Pa.")
@click.option("--poisson-ratio", type=FINITE, default=0.3, show_default=True, help="Poisson ratio, in (-1, 0.5).")
@click.option("--density", type=FINITE, default=1000.0, show_default=True, help="Density, kg/m^3.")
@click.option("--material", type=click.Choice(["neohookean", "corotated"]), default="neohookean", show_default=True,
              help="Elastic model.")
@click.option("--heterogeneous", is_flag=True, help="Two halves along x; the +x half is --stiffness-factor times stiffer.")
@click.option("--stiffness-factor", type=FINITE, default=10.0, show_default=True, help="Stiffness ratio of the halves.")
@click.option("--gravity", type=VECTOR3, default="0,-9.8,0", show_default=True, help="Gravity x,y,z, m/s^2 (y is up).")
@click.option("--velocity", type=VECTOR3, default="0,0,0", show_default=True, help="Initial velocity x,y,z, m/s.")
@click.option("--ground-height", type=FINITE, default=0.0, show_default=True, help="Height of the ground plane (normal +y).")
@click.option("--ground", type=click.Choice(["sticky", "slip", "friction"]), default="friction", show_default=True,
              help="Ground contact.")
@click.option("--friction", type=FINITE, default=0.5, show_default=True, help="Coulomb coefficient for --ground friction.")
@click.option("--views", type=int, default=10, show_default=True, help="Cameras around and above the object.")
@click.option("--frames", type=int, default=30, show_default=True, help="Frames of video.")
@click.option("--frame-dt", type=FINITE, default=0.03, show_default=True, help="Seconds between frames.")
@click.option("--resolution", type=int, default=512, show_default=True, help="Image width and height, pixels.")
@click.option("--grid", type=int, default=64, show_default=True, help="MPM grid nodes per side of the 1 m box.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the particle jitter.")
@click.option("--fit-frames", type=int, default=None, help="Frames for fitting; the rest are future frames (default 20).")
@click.option("--shading/--no-shading", default=False, show_default=True,
              help="Lambert-shade the particles by their surface normals under a fixed light from above and the "
                   "+x side (direction (0.5, 1, 0.3), ambient 0.35); off: flat colours.")
@click.option("--variant-of", "variant_of", default=None, type=click.Path(file_okay=False),
              help="A dataset of generate-mpm: record the same object (shape, size, material, particles, seed, "
                   "cameras, frames) under other --velocity, --gravity, --drop-height, --ground-height or --friction; "
                   "those not given are DATA's.")
@click.option("--capture", "capture", type=click.Choice(["real"]), default=None,
              help="real: write a synthetic real capture instead (a COLMAP static capture in an unknown similarity "
                   "frame, --views calibrated 16:9 videos --resolution wide, both capture layouts, ground truth "
                   "aside; pipeline/capture_gen.py).")
@click.option("--static-views", type=int, default=None,
              help="Photos of the object in its frame-0 pose from the upper hemisphere, which `sgaus fit` uses for "
                   "the object's shape beside the videos' frame 0 (they see its top); with --capture, the static "
                   "capture's photos.  [default: 0; with --capture 60]")
@click.option("--static-elevation", type=Numbers(2), default="10,70", show_default=True, metavar="LOW,HIGH",
              help="LOW,HIGH: the elevations (degrees above the horizon, seen from the object) the static photos "
                   "are spread over; the default is the upper hemisphere, as a person walks around an object, which "
                   "never sees its underside; a negative LOW also photographs it from below (above the ground).")
@click.option("--static-resolution", type=int, default=160, show_default=True,
              help="With --capture: width of the static photos (4:3).")
@click.option("--out", required=True, type=click.Path(), help="Dataset directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace a previous generated dataset in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def generate_mpm_cmd(ctx, shape, mesh, size, rotate, drop_height, youngs_modulus, poisson_ratio, density, material,
                     heterogeneous, stiffness_factor, gravity, velocity, ground_height, ground, friction, views, frames,
                     frame_dt, resolution, grid, seed, fit_frames, shading, variant_of, capture, static_views,
                     static_elevation, static_resolution, out, overwrite, quiet):
    """Simulate an elastic object with MLS-MPM and render a multi-view video of it (ground truth)."""
    from click.core import ParameterSource

    from pipeline.data.cameras import check_elevation
    from pipeline.generate import STATIC_ELEVATION, GenerateConfig, generate, variant_config

    if shape is not None and mesh is not None:
        raise click.BadParameter("--shape and --mesh exclude each other")
    if capture is not None and variant_of is not None:
        raise click.BadParameter("--capture and --variant-of exclude each other")
    if variant_of is not None:  # the object and everything else from DATA's scene.json; the conditions given here
        given = lambda name: ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)  # noqa: E731
        conditions = ("velocity", "gravity", "drop_height", "ground_height", "friction")
        fixed = [p.opts[0] for p in ctx.command.params
                 if given(p.name) and p.name not in (*conditions, "variant_of", "out", "overwrite", "quiet")]
        if fixed:
            raise SgausError(f"{', '.join(fixed)} cannot be combined with --variant-of: the object, material, cameras "
                             "and timing are DATA's (only --velocity, --gravity, --drop-height, --ground-height and "
                             "--friction change)")
        cfg, variant = variant_config(
            variant_of, velocity=_vec3(velocity, "--velocity") if given("velocity") else None,
            gravity=_vec3(gravity, "--gravity") if given("gravity") else None,
            **{name: value for name, value in (("drop_height", drop_height), ("ground_height", ground_height),
                                               ("friction", friction)) if given(name)})
        check_output_dir(out, "dataset", overwrite=overwrite, protect=[variant_of, *([cfg.mesh] if cfg.mesh else [])])
        _taichi(ctx)
        click.echo(f"wrote {generate(cfg, out, progress=not quiet, log=click.echo, variant_of=variant)} "
                   f"(a variant of {variant_of}: {', '.join(variant['changed'])} changed)")
        return
    cfg = GenerateConfig(
        shape=None if mesh else (shape or "torus"), mesh=mesh, size=size, rotation_deg=_vec3(rotate, "--rotate"),
        drop_height=drop_height, youngs_modulus=youngs_modulus, poisson_ratio=poisson_ratio, density=density,
        model=material, heterogeneous=heterogeneous, stiffness_factor=stiffness_factor,
        gravity=_vec3(gravity, "--gravity"), velocity=_vec3(velocity, "--velocity"), ground_height=ground_height,
        ground=ground, friction=friction, views=views, frames=frames, resolution=resolution, frame_dt=frame_dt,
        grid=grid, seed=seed, fit_frames=fit_frames, shading=shading)
    cfg.validate()  # before Taichi starts: bad options fail fast and write nothing
    if static_views is not None and static_views < (1 if capture else 0):
        raise SgausError(f"--static-views must be {'1' if capture else '0'} or more, got {static_views}")
    elevation = check_elevation(static_elevation, "--static-elevation")
    if capture and elevation != STATIC_ELEVATION:
        raise SgausError("--static-elevation is for generated videos' photos; --capture's static capture is taken "
                         "around the object on the ground")
    if not static_views and not capture and elevation != STATIC_ELEVATION:
        raise SgausError("--static-elevation has no effect without --static-views N (N > 0)")
    if capture == "real":
        from pipeline.capture_gen import generate_capture

        check_output_dir(out, "capture", overwrite=overwrite, protect=[mesh] if mesh else ())
        _taichi(ctx)
        static_views = 60 if static_views is None else static_views
        click.echo(f"wrote {generate_capture(cfg, out, static_views, static_resolution, seed, not quiet, click.echo)}")
        return
    check_output_dir(out, "dataset", overwrite=overwrite, protect=[mesh] if mesh else ())
    _taichi(ctx)
    path = generate(cfg, out, progress=not quiet, log=click.echo, static_views=static_views or 0,
                    static_elevation=elevation)
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------- fit / eval
@cli.command("fit")
@click.argument("data", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--preset", type=click.Choice(["fast", "paper", "tiny"]), default="fast", show_default=True,
              help="fast: the CPU default; paper: the authors' settings; tiny: a smoke test.")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="YAML file of settings (names as in `--set`), applied over the preset.")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="Override any setting, e.g. --set k_neighbors=128 (repeatable).")
@click.option("--resume", is_flag=True, help="Reuse stages already saved in --out whose inputs and settings match.")
@click.option("--overwrite", is_flag=True, help="Fit again into a previous run in --out, recomputing every stage.")
@click.option("--gravity", type=VECTOR3, default=None, help="Gravity x,y,z (default: the dataset's scene.json).")
@click.option("--ground", type=Numbers(6), default=None, metavar="X,Y,Z,NX,NY,NZ",
              help="Ground plane as a point and a normal (default: the dataset's scene.json).")
@click.option("--iterations", type=int, default=None, help="Dynamic-stage iterations.")
@click.option("--anchors", "n_anchors", type=int, default=None, help="Number of anchors N_A.")
@click.option("--k", "k_neighbors", type=int, default=None, help="Springs per anchor n_k.")
@click.option("--substeps", type=int, default=None, help="Simulation substeps per frame.")
@click.option("--image-size", type=int, default=None, help="Longest image side used for fitting (0 = full).")
@click.option("--truncate-per-frame", is_flag=True, default=None,
              help="The authors' mode: gradients cut at every frame, one optimiser step per frame.")
@click.option("--no-soft-vector", is_flag=True, default=None, help="Ablation: every spring has weight 1 (no eta).")
@click.option("--single-k", is_flag=True, default=None, help="Ablation: one global stiffness.")
@click.option("--static-ply", default=None, type=click.Path(dir_okay=False),
              help="A capture only: a 3DGS PLY (INRIA layout) trained on the static capture replaces the static stage.")
@click.option("--vgg-weights", default=None, type=click.Path(dir_okay=False),
              help="A capture only: a torchvision vgg16 state dict for Eq. 19's perceptual term (never downloaded).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def fit_cmd(ctx, data, out, preset, config, assignments, resume, overwrite, gravity, ground, iterations, n_anchors,
            k_neighbors, substeps, image_size, truncate_per_frame, no_soft_vector, single_k, static_ply, vgg_weights,
            quiet):
    """Fit a simulatable asset to the multi-view video in DATA (static Gaussians, anchors and
    springs, refine, initial velocity, then stiffness, soft vector and friction). DATA may be a
    real capture (capture.json, or the Spring-Gaus authors' layout): see README, "Your own capture"."""
    from pipeline.fit.runner import fit
    from pipeline.fit.settings import make_settings, parse_assignments

    overrides = parse_assignments(assignments)
    named = dict(iterations=iterations, n_anchors=n_anchors, k_neighbors=k_neighbors, substeps=substeps,
                 image_size=image_size, truncate_per_frame=truncate_per_frame, single_k=single_k)
    overrides.update({k: v for k, v in named.items() if v is not None})
    if no_soft_vector:
        overrides["soft_vector"] = False
    if vgg_weights:
        overrides["vgg_weights"] = str(vgg_weights)
    settings = make_settings(preset, config, overrides)
    from pipeline.data.capture import is_capture

    if is_capture(data):
        from pipeline.fit.capture_fit import fit_capture

        if gravity or ground:
            raise SgausError("a capture's gravity and ground come from capture.json (or the calibration board)")
        _taichi(ctx)
        run = fit_capture(data, out, settings, resume=resume, static_ply=static_ply, progress=not quiet,
                          log=click.echo, overwrite=overwrite)
        click.echo(f"asset written to {run / 'asset'} (registration: {run / 'registration.png'})")
        return
    if static_ply or vgg_weights:
        raise SgausError("--static-ply and --vgg-weights apply to real captures (DATA with capture.json or the "
                         "Spring-Gaus layout)")
    grd = (_vec3(ground[:3], "--ground point"), _vec3(ground[3:], "--ground normal")) if ground else None
    _taichi(ctx)
    run = fit(data, out, settings, resume=resume, gravity=gravity, ground=grd, progress=not quiet,
              log=click.echo, overwrite=overwrite)
    click.echo(f"asset written to {run / 'asset'} (loss curves: {run / 'loss.png'})")


@cli.command("import-capture")
@click.argument("src", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory of the capture.json to write.")
@click.option("--sequence", default=None, help="Sequence of the authors' layout (default: the first).")
@click.option("--overwrite", is_flag=True, help="Replace a previous capture.json in --out.")
def import_capture_cmd(src, out, sequence, overwrite):
    """Describe a capture in the Spring-Gaus authors' layout (SRC) as sgaus' capture.json in OUT
    (paths relative to OUT; the images are not copied). `sgaus fit` reads either as it is."""
    from pipeline.data.capture import capture_summary, read_capture, write_capture_json

    cap = read_capture(src, log=click.echo, sequence=sequence, layout="spring-gaus")
    check_output_dir(out, "capture", overwrite=overwrite, protect=[src])
    click.echo(capture_summary(cap))
    click.echo(f"wrote {write_capture_json(cap, out)}")


@cli.command("eval")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--data", default=None, type=click.Path(file_okay=False),
              help="Dataset (default: the one fitted); another recording of the same object makes the evaluation "
                   "counterfactual (RUN/eval_counterfactual/<name>/).")
@click.option("--scale", type=FINITE, default=None,
              help="Image scale for PSNR/SSIM (default: the scale used for fitting; 1 = full resolution).")
@click.option("--camera", default=None, help="Camera of the side-by-side video (default: the first).")
@click.option("--no-baselines", is_flag=True, help="Skip the hold and single-k baselines.")
@click.option("--last-complete", is_flag=True, help="Use the asset of the last finished fit when the latest did not finish.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def eval_cmd(ctx, run, data, scale, camera, no_baselines, last_complete, quiet):
    """Chamfer distance, EMD, PSNR and SSIM of RUN on its fitted frames and on future frames,
    with the hold and single-k baselines; writes RUN/eval/ (metrics.json, metrics.md, video).

    With --data OTHER, a recording of the same object under other conditions (another initial
    velocity, gravity, ground or drop height): the asset is simulated from OTHER's first frame
    under OTHER's conditions (v0 refitted on OTHER's frames before contact) and compared with it
    on every frame; writes RUN/eval_counterfactual/<OTHER's name>/."""
    from pipeline.counterfactual import evaluate_run

    _taichi(ctx)
    result = evaluate_run(run, data=data, scale=scale, baselines=not no_baselines, camera=camera, progress=not quiet,
                          log=click.echo, last_complete=last_complete)
    click.echo(f"metrics written to {result.get('output', f'{run}/eval')}/metrics.json and metrics.md")


# ---------------------------------------------------------------- suite
@cli.command("suite")
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--builtin", type=click.Choice(["paper-synthetic", "ablation"]), default=None,
              help="A built-in suite instead of SPEC: paper-synthetic (Tables 1-2: eight shapes, soft to stiff) "
                   "or ablation (Table 3 on a heterogeneous torus).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Directory of the suite: data/, runs/, logs/, table.md, table.json, table.png.")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="Run on an existing Ray cluster (auto: the one started on this machine with `ray start`); "
                   "default: start a local Ray.")
@click.option("--workers", type=int, default=None,
              help="Tasks at once: the CPUs given to the local Ray (default: this machine's); with --address, "
                   "the most tasks in flight (default: as many as the cluster takes).")
@click.option("--resume", is_flag=True, help="Keep finished tasks whose key matches; fits continue from saved stages.")
@click.option("--verbose", is_flag=True, help="Show Ray's messages and every task's log lines.")
@click.pass_context
def suite_cmd(ctx, spec, builtin, out, address, workers, resume, verbose):
    """Run a suite: scenes x methods x seeds, each (scene, method, seed) generated, fitted and
    evaluated as an independent task on Ray; results gathered into OUT/table.md, table.json and
    table.png laid out like the paper's Tables 1-3 (seeds averaged).

    \b
    SPEC (YAML):
      seeds: [0, 1]
      scenes:
        - {name: soft_torus, shape: torus, youngs_modulus: 1e4, views: 4, frames: 12, resolution: 64}
        - {name: mine, path: existing/dataset}
      methods:
        - {name: full, preset: fast, set: {iterations: 20}}
        - {name: single_k, preset: fast, single_k: true}
    """
    from pathlib import Path

    from pipeline.suite import builtin_spec, load_spec, run_suite

    if (spec is None) == (builtin is None):
        raise SgausError("give a suite SPEC file or --builtin NAME (one of them)")
    if workers is not None and workers < 1:
        raise SgausError(f"--workers must be at least 1, got {workers}")
    suite = builtin_spec(builtin) if builtin else load_spec(spec)  # checked whole before anything starts
    doc = run_suite(suite, out, address=address, workers=workers, arch=ctx.find_root().obj["arch"], resume=resume,
                    verbose=verbose, log=click.echo)
    s = doc["summary"]
    click.echo((Path(out) / "table.md").read_text().split("\n## Tasks")[0].rstrip())
    click.echo(f"\n{s['tasks']} task(s): {s['ok']} finished ({s['reused']} kept from an earlier run), "
               f"{s['failed']} failed")
    click.echo(f"tables: {Path(out) / 'table.md'}, table.json, table.png")
    if s["failed"]:
        raise click.ClickException(f"{s['failed']} of {s['tasks']} tasks failed (errors in {Path(out) / 'table.md'})")


# ---------------------------------------------------------------- simulate / export / view
@cli.command("simulate")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--gravity", type=Numbers(1, 3), default=None,
              help="One number: magnitude along the fitted gravity (0 = zero gravity, 19.6 = hypergravity); or x,y,z.")
@click.option("--ground-height", type=FINITE, default=None, help="Height of the ground plane along its normal.")
@click.option("--no-ground", is_flag=True, help="Remove the ground plane.")
@click.option("--friction", type=Numbers(1, words=("sticky", "smooth")), default=None,
              help="Ground friction: sticky, smooth or a value in [0, 1].")
@click.option("--velocity", type=VECTOR3, default=None, help="Initial velocity x,y,z.")
@click.option("--stiffness-scale", type=FINITE, default=1.0, show_default=True, help="Multiply every stiffness.")
@click.option("--frames", type=int, default=None, help="Frames to simulate (default: the dataset's).")
@click.option("--fps", type=FINITE, default=None, help="Video frame rate (default: real time, at most 30).")
@click.option("--camera", default=None, help="Dataset camera to render from (default: the first).")
@click.option("--orbit", is_flag=True, help="Render from a camera orbiting the object instead.")
@click.option("--size", type=int, default=384, show_default=True, help="Longest side of the rendered frames.")
@click.option("--background", type=click.Choice(["black", "white", "checker"]), default="black", show_default=True,
              help="Behind the object and above the horizon.")
@click.option("--ground-grid/--no-ground-grid", default=None,
              help="Draw the ground plane as a checker with a contact shadow (default: when there is a ground).")
@click.option("--overwrite", is_flag=True, help="Replace a previous simulation in --out.")
@click.option("--yes", is_flag=True, help="Write the output even when it is estimated above a few GB.")
@click.option("--last-complete", is_flag=True, help="Use the asset of the last finished fit when the latest did not finish.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def simulate_cmd(ctx, run, out, gravity, ground_height, no_ground, friction, velocity, stiffness_scale, frames,
                 fps, camera, orbit, size, background, ground_grid, overwrite, yes, last_complete, quiet):
    """Re-simulate the fitted asset in RUN under edited gravity, ground, friction, initial
    velocity or stiffness; writes a video, PNG frames, one PLY per frame and anchor trajectories."""
    from pipeline.simulate import Edits, parse_friction, simulate

    if ground_height is not None and no_ground:
        raise click.BadParameter("--ground-height and --no-ground exclude each other")
    edits = Edits(
        gravity=gravity,
        ground_height=ground_height,
        no_ground=no_ground,
        friction=parse_friction(friction) if friction is not None else None,
        velocity=velocity,
        stiffness_scale=stiffness_scale,
    )
    edits.check()  # before the asset is read
    _taichi(ctx)
    path = simulate(run, out, edits, n_frames=frames, fps=fps, camera=camera, orbit=orbit, size=size,
                    progress=not quiet, log=click.echo, overwrite=overwrite, yes=yes, last_complete=last_complete,
                    background=background, ground_grid=ground_grid)
    click.echo(f"video: {path / 'video.mp4'}  frames: {path / 'frames'}  splats: {path / 'ply'}")


@cli.command("export")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["ply", "splat-sequence"]), default="ply", show_default=True,
              help="ply: the static asset as one 3DGS PLY; splat-sequence: one PLY per frame of the fitted motion.")
@click.option("--out", required=True, type=click.Path(), help="A .ply file (ply) or a directory (splat-sequence).")
@click.option("--frames", type=int, default=None, help="Frames of the sequence (default: the dataset's).")
@click.option("--overwrite", is_flag=True, help="Replace a previous export at --out.")
@click.option("--last-complete", is_flag=True, help="Use the asset of the last finished fit when the latest did not finish.")
@click.pass_context
def export_cmd(ctx, run, fmt, out, frames, overwrite, last_complete):
    """Export the asset in RUN as splat files that common viewers open."""
    from pipeline.simulate import export

    if fmt == "splat-sequence":
        _taichi(ctx)
    click.echo(f"wrote {export(run, out, fmt, n_frames=frames, overwrite=overwrite, last_complete=last_complete)}")




@cli.command("view")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--port", type=int, default=8080, show_default=True,
              help="Port of the viewer (0 = any free port; a busy port moves to the next free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 = all).")
@click.option("--frames", type=int, default=None, help="Frames to simulate (default: the dataset's).")
@click.pass_context
def view_cmd(ctx, run, port, host, frames):
    """Interactive viewer of the asset in RUN in the browser (needs the optional viser:
    pip install 'sgaus[viewer]'): Gaussians, anchors, springs, a frame slider, and the edits of
    `sgaus simulate` with a button that re-simulates. Ctrl-C stops it."""
    from pipeline.viewer import require_viser, serve

    require_viser()
    if frames is not None and frames < 1:
        raise click.BadParameter("--frames must be at least 1")
    if not 0 <= port <= 65535:
        raise click.BadParameter("--port must be between 0 and 65535")
    _taichi(ctx)
    serve(run, host=host, port=port, n_frames=frames, log=click.echo)


def main() -> None:
    cli(prog_name="sgaus")


if __name__ == "__main__":
    main()
