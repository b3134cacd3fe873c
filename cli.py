"""The ``sgaus`` command line: commands only; the work lives in taichi_sim/, render/, pipeline/.

Bad input (missing or malformed files, impossible parameters, an unstable simulation) raises
ValueError / FileNotFoundError inside the library; here it becomes one line on stderr and a
non-zero exit, without a traceback.
"""
from __future__ import annotations

import os

os.environ.setdefault("TI_SKIP_VERSION_CHECK", "on")
os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "0")

import click  # noqa: E402


class _Group(click.Group):
    """A click group that turns library errors into one clear line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
            msg = str(err) or err.__class__.__name__
            if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in msg:
                msg = f"{msg}: {err.filename}"
            raise click.ClickException(msg.splitlines()[0] if msg else msg) from None


def _taichi(ctx: click.Context, default_fp: str = "f32") -> str:
    """Initialise Taichi with the group's --arch (the only place the CLI does so)."""
    from taichi_sim.runtime import init_taichi

    return init_taichi(ctx.find_root().obj["arch"], default_fp=default_fp)


def _vec3(text: str, name: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{name} must be three numbers x,y,z, got {text!r}") from None
    if len(vals) != 3:
        raise click.BadParameter(f"{name} must be three numbers x,y,z, got {text!r}")
    return vals


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


# ---------------------------------------------------------------- demo (foundation issue)
# ---------------------------------------------------------------- reconstruct (renderer issue)
# ---------------------------------------------------------------- generate-mpm (MPM issue)
# ---------------------------------------------------------------- fit / eval (fit issue)
# ---------------------------------------------------------------- simulate / export / view


def main() -> None:
    cli(prog_name="sgaus")


if __name__ == "__main__":
    main()
