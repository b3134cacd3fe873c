"""`sgaus view`: an interactive viser viewer of a fitted asset (optional extra: ``sgaus[viewer]``).

The viewer shows the asset's Gaussians (viser's Gaussian splats), its anchors (a point cloud, in
one colour or coloured by fitted log10 stiffness with the report's colormap), its springs (line
segments, a random subsample when there are many) and the ground plane (a grid whose cells are the
squares of the ground in `sgaus simulate` videos), with a frame
slider over a simulation of the asset and GUI controls for the edits of ``sgaus simulate``
(gravity, ground height / no ground, friction, initial velocity, stiffness scale); the "simulate"
button re-runs :func:`pipeline.simulate.simulate_asset` on :func:`pipeline.simulate.apply_edits`.

Two layers, so that the scene can be checked without a browser or viser:

* :func:`build_scene` (no viser) simulates the asset and returns a :class:`ViewerScene`: every
  array the viewer shows, per frame where it moves.
* :func:`start_viewer` (needs viser) puts a scene on a viser server and adds the GUI; it returns a
  :class:`Viewer` whose ``port`` is the one actually bound (``port=0`` lets the OS choose).
  :func:`serve` runs it until Ctrl-C.

viser is imported only inside this module's functions; the rest of sgaus never imports it.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.asset import Asset, load_asset
from pipeline.simulate import Edits, apply_edits, ground_square, simulate_asset
from taichi_sim.errors import SgausError
from taichi_sim.spring_params import friction_from_logit

MAX_SPRINGS = 4000  # springs drawn at most (a random subsample of the undirected springs)
ANCHOR_COLOUR = (255, 140, 0)  # anchors when they are not coloured by stiffness
MAX_FRAMES = 2000  # frames one simulation may ask for from the GUI
VISER_MISSING = "the viewer needs viser: pip install 'sgaus[viewer]'"


class ViewerUnavailable(SgausError):
    """viser is not installed."""


def require_viser():
    """The viser module, or :class:`ViewerUnavailable` with one line saying how to install it."""
    try:
        import viser
    except ImportError:
        raise ViewerUnavailable(VISER_MISSING) from None
    return viser


# ------------------------------------------------------------------ scene data (no viser)
def covariances_from_scales(scales: torch.Tensor) -> np.ndarray:
    """Covariances [G,3,3] of Gaussians with standard deviations [G] (isotropic) or [G,3] (axis-aligned)."""
    s = scales.detach().double()
    if s.dim() == 1:
        s = s[:, None].expand(-1, 3)
    return torch.diag_embed(s * s).numpy().astype(np.float32)


def undirected_springs(neighbors: torch.Tensor) -> np.ndarray:
    """Undirected springs [S,2] (anchor indices, i < j, sorted) of a directed neighbour table [N,K];
    a spring that both of its anchors list counts once."""
    nb = neighbors.detach().cpu().numpy().astype(np.int64)
    n, k = nb.shape
    i = np.repeat(np.arange(n, dtype=np.int64), k)
    j = nb.reshape(-1)
    return np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], 1), axis=0)


def spring_pairs(neighbors: torch.Tensor, max_springs: int = MAX_SPRINGS, seed: int = 0) -> np.ndarray:
    """The undirected springs [S,2] to draw: all of them, or a random subsample of ``max_springs``
    when there are more (same seed, same subsample)."""
    if max_springs < 0:
        raise SgausError(f"max_springs must not be negative, got {max_springs}")
    pairs = undirected_springs(neighbors)
    if len(pairs) > max_springs:
        keep = np.random.default_rng(seed).choice(len(pairs), size=max_springs, replace=False)
        pairs = pairs[np.sort(keep)]
    return pairs


@dataclass
class ViewerScene:
    """Everything the viewer draws. F = frames simulated (frame 0 is the rest state).

    centres      [F,G,3] Gaussian centres per frame
    covariances  [G,3,3] from the (fixed) scales
    rgbs         [G,3] colours in [0, 1]
    opacities    [G,1] opacities in (0, 1)
    anchors      [F,N,3] anchor positions per frame
    springs      [S,2] drawn springs (anchor index pairs, a subsample when there are many)
    n_springs    springs of the model, undirected, before subsampling
    substeps     substeps per frame the simulation needed
    frame_dt     seconds between frames
    ground       (point [3], normal [3]) of the ground plane, or None
    log_stiffness  [N] log10 k of every anchor as simulated (edits included), or None
    """

    centres: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray
    anchors: np.ndarray
    springs: np.ndarray
    n_springs: int
    substeps: int
    frame_dt: float
    ground: tuple[np.ndarray, np.ndarray] | None
    log_stiffness: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.centres.shape[0])

    @property
    def n_gaussians(self) -> int:
        return int(self.centres.shape[1])

    @property
    def n_anchors(self) -> int:
        return int(self.anchors.shape[1])

    @property
    def frame_range(self) -> tuple[int, int]:
        """First and last value of the frame slider."""
        return 0, self.n_frames - 1

    def spring_segments(self, frame: int) -> np.ndarray:
        """Segments [S,2,3] of the drawn springs at ``frame``."""
        return self.anchors[frame][self.springs]


def default_frames(asset: Asset) -> int:
    return int(asset.info.get("n_frames", 30))


def build_scene(asset: Asset, n_frames: int | None = None, edits: Edits | None = None,
                max_springs: int = MAX_SPRINGS) -> ViewerScene:
    """Simulate ``asset`` (with ``edits`` applied) for ``n_frames`` frames (default: the dataset's)
    and collect what the viewer draws. Taichi must be initialised."""
    n_frames = default_frames(asset) if n_frames is None else int(n_frames)
    if not 1 <= n_frames <= MAX_FRAMES:
        raise SgausError(f"--frames must be between 1 and {MAX_FRAMES}, got {n_frames}")
    edited = apply_edits(asset, edits) if edits is not None else asset
    positions, means, substeps = simulate_asset(edited, n_frames - 1)
    g = edited.gaussians
    cfg = edited.model
    ground = None
    if cfg.ground_point is not None:
        normal = np.asarray(cfg.ground_normal, dtype=np.float64)
        ground = (np.asarray(cfg.ground_point, dtype=np.float64), normal / np.linalg.norm(normal))
    return ViewerScene(
        centres=means.detach().float().numpy(),
        covariances=covariances_from_scales(g.scales()),
        rgbs=g.rgb().detach().float().numpy(),
        opacities=g.opacities().detach().float().numpy()[:, None],
        anchors=positions.detach().float().numpy(),
        springs=spring_pairs(edited.model.neighbors, max_springs),
        n_springs=len(undirected_springs(edited.model.neighbors)),
        substeps=int(substeps),
        frame_dt=float(edited.integrator.frame_dt),
        ground=ground,
        log_stiffness=edited.params.log_stiffness.detach().double().numpy().copy(),
    )


def anchor_colours(log_stiffness, by_stiffness: bool, vmin: float | None = None,
                   vmax: float | None = None) -> np.ndarray:
    """uint8 RGB [N,3] of the anchors: log10 k in the report's colormap over ``vmin .. vmax``
    (pipeline.report.stiffness_colors) when ``by_stiffness``, else all ANCHOR_COLOUR."""
    from pipeline.report import stiffness_colors

    if by_stiffness:
        return stiffness_colors(log_stiffness, vmin, vmax)
    n = len(np.asarray(log_stiffness).reshape(-1))
    return np.tile(np.asarray(ANCHOR_COLOUR, dtype=np.uint8), (n, 1))


@dataclass
class Controls:
    """The values of the GUI's edit controls (each field as the GUI shows it).

    gravity_as_vector  False: ``gravity`` is a magnitude along the fitted direction; True: ``gravity_vector``
    gravity            magnitude, m/s^2 (default: the fitted one)
    gravity_vector     x, y, z in m/s^2 (default: the fitted vector)
    ground             whether there is a ground plane (default: as fitted)
    ground_height      height of the plane along its normal (default: the fitted height)
    friction           "fitted", "sticky", "smooth" or "value" (then ``friction_value`` in [0, 1])
    friction_value     0 = sticky ... 1 = smooth (default: the fitted factor)
    velocity           initial velocity x, y, z (default: the fitted one)
    stiffness_scale    multiplies every stiffness (default 1)
    frames             frames to simulate (default: the dataset's)
    """

    gravity_as_vector: bool
    gravity: float
    gravity_vector: tuple[float, float, float]
    ground: bool
    ground_height: float
    friction: str
    friction_value: float
    velocity: tuple[float, float, float]
    stiffness_scale: float
    frames: int

    @classmethod
    def from_asset(cls, asset: Asset, frames: int | None = None) -> "Controls":
        cfg = asset.model
        g = tuple(float(x) for x in cfg.gravity)
        normal = np.asarray(cfg.ground_normal, dtype=np.float64)
        normal = normal / np.linalg.norm(normal)
        if cfg.ground_point is not None:
            height = float(np.asarray(cfg.ground_point, dtype=np.float64) @ normal)
        else:  # a plane a little below the object, offered if the user switches the ground on
            heights = asset.model.rest_positions.detach().double().numpy() @ normal
            height = float(heights.min() - 0.25 * max(float(np.ptp(heights)), 1e-3))
        return cls(
            gravity_as_vector=False, gravity=float(np.linalg.norm(g)), gravity_vector=g,
            ground=cfg.ground_point is not None, ground_height=height, friction="fitted",
            friction_value=float(friction_from_logit(asset.params.friction_logit.detach().double())),
            velocity=tuple(float(x) for x in asset.v0.detach().double()), stiffness_scale=1.0,
            frames=default_frames(asset) if frames is None else int(frames),
        )

    def to_edits(self, asset: Asset) -> Edits:
        """The :class:`Edits` these controls ask of ``asset``; unchanged controls keep the fitted values."""
        fitted = Controls.from_asset(asset)
        if self.friction not in ("fitted", "sticky", "smooth", "value"):
            raise SgausError(f"friction must be fitted, sticky, smooth or value, got {self.friction!r}")
        ground_height = None
        if self.ground and (not fitted.ground or abs(self.ground_height - fitted.ground_height) > 1e-9):
            ground_height = float(self.ground_height)
        return Edits(
            gravity=tuple(float(x) for x in self.gravity_vector) if self.gravity_as_vector else float(self.gravity),
            ground_height=ground_height,
            no_ground=not self.ground,
            friction={"fitted": None, "value": float(self.friction_value)}.get(self.friction, self.friction),
            velocity=tuple(float(x) for x in self.velocity),
            stiffness_scale=float(self.stiffness_scale),
        )


# ------------------------------------------------------------------ the viser server
def wxyz_z_to(normal: np.ndarray) -> tuple[float, float, float, float]:
    """The unit quaternion (w, x, y, z) rotating +z onto ``normal``."""
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    axis = np.cross([0.0, 0.0, 1.0], n)
    cos = float(n[2])
    if np.linalg.norm(axis) < 1e-9:  # parallel (identity) or opposite (half turn about x)
        return (1.0, 0.0, 0.0, 0.0) if cos > 0 else (0.0, 1.0, 0.0, 0.0)
    half = 0.5 * math.acos(max(-1.0, min(1.0, cos)))
    axis = axis / np.linalg.norm(axis) * math.sin(half)
    return (math.cos(half), float(axis[0]), float(axis[1]), float(axis[2]))


def rotate(wxyz, v) -> np.ndarray:
    """The vector ``v`` [3] turned by the unit quaternion ``wxyz``."""
    w, x, y, z = wxyz
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return R @ np.asarray(v, dtype=np.float64)


def ground_grid_pose(point, normal, centre, square: float) -> tuple[tuple[float, float, float],
                                                                   tuple[float, float, float, float]]:
    """Position and orientation (wxyz) of a grid drawn in its local x-y plane so that it lies on
    the ground plane (``point``, ``normal``) under ``centre``, turned by :func:`wxyz_z_to`, with its
    centre snapped to the lattice of ``square``-wide squares through ``point``: an even number of
    cells then puts its lines on the edges of the squares in `sgaus simulate` videos (exactly so
    when the normal is a world axis)."""
    point = np.asarray(point, dtype=np.float64)
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    wxyz = wxyz_z_to(n)
    ex, ey = rotate(wxyz, [1.0, 0.0, 0.0]), rotate(wxyz, [0.0, 1.0, 0.0])
    rel = np.asarray(centre, dtype=np.float64) - point
    below = point + square * (np.round(rel @ ex / square) * ex + np.round(rel @ ey / square) * ey)
    return tuple(float(x) for x in below), wxyz


class Viewer:
    """A running viewer: a viser server showing one asset. ``frame`` is the shown frame."""

    def __init__(self, asset: Asset, scene: ViewerScene, host: str = "127.0.0.1", port: int = 8080,
                 max_springs: int = MAX_SPRINGS, log=print):
        viser = require_viser()
        self.asset = asset
        self.scene = scene
        self.max_springs = max_springs
        self.log = log
        self._lock = threading.RLock()  # guards the shown scene (GUI callbacks run in viser's threads)
        self._simulating = threading.Lock()  # one simulation at a time
        self._next_tick = 0.0
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        try:
            self._add_scene()
            self._add_gui()
        except BaseException:
            self.server.stop()
            raise

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def host(self) -> str:
        return str(self.server.get_host())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --------------------------------------------------------------- scene nodes
    def _sizes(self) -> tuple[np.ndarray, float, float]:
        """Centre and radius of the object at rest, and a typical anchor spacing."""
        rest = self.scene.anchors[0].astype(np.float64)
        centre = rest.mean(0)
        radius = float(np.linalg.norm(rest - centre, axis=1).max()) or 1.0
        spacing = float(self.asset.model.rest_length[:, 0].double().median()) or radius / 10
        return centre, radius, spacing

    def _add_scene(self) -> None:
        sc = self.server.scene
        s = self.scene
        centre, radius, spacing = self._sizes()
        up = s.ground[1] if s.ground is not None else np.asarray(self.asset.model.ground_normal, dtype=np.float64)
        sc.set_up_direction(tuple(float(x) for x in up / np.linalg.norm(up)))
        self.splats = sc.add_gaussian_splats("/gaussians", centers=s.centres[0], covariances=s.covariances,
                                             rgbs=s.rgbs, opacities=s.opacities)
        self.anchor_cloud = sc.add_point_cloud("/anchors", points=s.anchors[0], colors=ANCHOR_COLOUR,
                                               point_size=0.12 * spacing, point_shape="circle",
                                               precision="float32")
        self.spring_lines = sc.add_line_segments("/springs", points=s.spring_segments(0),
                                                 colors=(80, 170, 255), thickness=1.0, thickness_units="screen")
        self.square = square = ground_square(self.asset)
        cells = 2 * math.ceil(max(8 * radius, 20 * square) / (2 * square))  # an even number of squares
        self.ground_grid = sc.add_grid("/ground", width=cells * square, height=cells * square, cell_size=square,
                                       section_size=5 * square, plane="xy", visible=False)
        self._place_ground()
        # look at the object from above and aside, about four radii away
        side = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 0.0, 1.0])
        eye = centre + 4.0 * radius * (0.8 * side / np.linalg.norm(side) + 0.5 * up / np.linalg.norm(up))
        self.server.initial_camera.look_at = tuple(float(x) for x in centre)
        self.server.initial_camera.position = tuple(float(x) for x in eye)

    def _place_ground(self) -> None:
        """Lay the grid on the scene's ground plane; it shows when there is a ground and the
        "ground grid" box is ticked."""
        s = self.scene
        if s.ground is not None:
            centre = s.anchors[0].astype(np.float64).mean(0)
            position, wxyz = ground_grid_pose(s.ground[0], s.ground[1], centre, self.square)
            self.ground_grid.position = position
            self.ground_grid.wxyz = wxyz
        ticked = getattr(self, "show_ground", None)  # absent while the scene is first built
        self.ground_grid.visible = s.ground is not None and (ticked is None or bool(ticked.value))

    def show_frame(self, frame: int) -> None:
        with self._lock:
            f = int(min(max(frame, 0), self.scene.n_frames - 1))
            self.splats.centers = self.scene.centres[f]
            self.anchor_cloud.points = self.scene.anchors[f]
            self.spring_lines.points = self.scene.spring_segments(f)
            self.frame = f

    # --------------------------------------------------------------- GUI
    def _add_gui(self) -> None:
        gui = self.server.gui
        s = self.scene
        c = Controls.from_asset(self.asset, frames=s.n_frames)
        self.frame = 0
        with gui.add_folder("Playback"):
            self.frame_slider = gui.add_slider("frame", min=0, max=max(s.n_frames - 1, 1), step=1, initial_value=0,
                                               disabled=s.n_frames < 2)
            self.play = gui.add_checkbox("play", initial_value=False)
            self.show_splats = gui.add_checkbox("Gaussians", initial_value=True)
            self.show_anchors = gui.add_checkbox("anchors", initial_value=True)
            self.show_springs = gui.add_checkbox("springs", initial_value=True)
            self.colour_by_stiffness = gui.add_checkbox("colour anchors by stiffness", initial_value=False)
            self.show_ground = gui.add_checkbox("ground grid", initial_value=True)  # drawn when there is a ground
            self.info = gui.add_markdown(self._info_text())
        with gui.add_folder("Edits"):
            self.gravity_as_vector = gui.add_checkbox("gravity as vector", initial_value=c.gravity_as_vector)
            self.gravity = gui.add_number("gravity (m/s²)", initial_value=c.gravity, min=0.0, step=0.1)
            self.gravity_vector = gui.add_vector3("gravity vector", initial_value=c.gravity_vector, step=0.1,
                                                  visible=False)
            self.ground = gui.add_checkbox("ground", initial_value=c.ground)
            self.ground_height = gui.add_number("ground height", initial_value=c.ground_height, step=0.01,
                                                visible=c.ground)
            self.friction = gui.add_dropdown("friction", ("fitted", "sticky", "smooth", "value"),
                                             initial_value=c.friction)
            self.friction_value = gui.add_slider("friction value", min=0.0, max=1.0, step=0.01,
                                                 initial_value=round(c.friction_value, 2), visible=False)
            self.velocity = gui.add_vector3("initial velocity", initial_value=c.velocity, step=0.05)
            self.stiffness_scale = gui.add_number("stiffness scale", initial_value=1.0, min=1e-3, max=1e3, step=0.1)
            self.frames = gui.add_number("frames", initial_value=c.frames, min=1, max=MAX_FRAMES, step=1)
            self.simulate_button = gui.add_button("simulate")
            self.reset_button = gui.add_button("reset edits")
            self.status = gui.add_markdown("")

        self.frame_slider.on_update(lambda _e: self.show_frame(int(self.frame_slider.value)))
        self.show_splats.on_update(lambda _e: setattr(self.splats, "visible", self.show_splats.value))
        self.show_anchors.on_update(lambda _e: setattr(self.anchor_cloud, "visible", self.show_anchors.value))
        self.show_springs.on_update(lambda _e: setattr(self.spring_lines, "visible", self.show_springs.value))
        self.colour_by_stiffness.on_update(lambda _e: self._colour_anchors())
        self.show_ground.on_update(lambda _e: self._place_ground())

        def gravity_mode(_e):
            self.gravity.visible = not self.gravity_as_vector.value
            self.gravity_vector.visible = self.gravity_as_vector.value

        self.gravity_as_vector.on_update(gravity_mode)
        self.ground.on_update(lambda _e: setattr(self.ground_height, "visible", self.ground.value))
        self.friction.on_update(lambda _e: setattr(self.friction_value, "visible", self.friction.value == "value"))
        self.simulate_button.on_click(lambda _e: self.simulate(self.read_controls()))
        self.reset_button.on_click(lambda _e: self.set_controls(Controls.from_asset(self.asset)))

    def _info_text(self) -> str:
        s = self.scene
        shown = f"{len(s.springs)} of {s.n_springs}" if len(s.springs) < s.n_springs else f"{s.n_springs}"
        text = (f"{s.n_gaussians} Gaussians, {s.n_anchors} anchors, {shown} springs  \n"
                f"{s.n_frames} frames of {s.frame_dt:g} s, {s.substeps} substeps per frame")
        if getattr(self, "colour_by_stiffness", None) is not None and self.colour_by_stiffness.value:
            lo, hi = self.stiffness_range
            text += f"  \nanchor colours: log10 k from {lo:.2f} (purple) to {hi:.2f} (yellow), as fitted"
        return text

    @property
    def stiffness_range(self) -> tuple[float, float]:
        """The colour range of the anchors: the fitted asset's log10 k, so that an edited stiffness
        scale shows as a shift of colour."""
        from pipeline.report import stiffness_range

        return stiffness_range(self.asset.params.log_stiffness.detach().double().numpy())

    def _colour_anchors(self) -> None:
        with self._lock:
            s = self.scene
            log_k = s.log_stiffness if s.log_stiffness is not None else np.zeros(s.n_anchors)
            self.anchor_cloud.colors = anchor_colours(log_k, bool(self.colour_by_stiffness.value),
                                                      *self.stiffness_range)
            self.info.content = self._info_text()

    def read_controls(self) -> Controls:
        """The edit controls' current values."""
        return Controls(
            gravity_as_vector=bool(self.gravity_as_vector.value), gravity=float(self.gravity.value),
            gravity_vector=tuple(float(x) for x in self.gravity_vector.value), ground=bool(self.ground.value),
            ground_height=float(self.ground_height.value), friction=str(self.friction.value),
            friction_value=float(self.friction_value.value),
            velocity=tuple(float(x) for x in self.velocity.value),
            stiffness_scale=float(self.stiffness_scale.value), frames=int(self.frames.value),
        )

    def set_controls(self, c: Controls) -> None:
        self.gravity_as_vector.value = c.gravity_as_vector
        self.gravity.value = c.gravity
        self.gravity_vector.value = c.gravity_vector
        self.ground.value = c.ground
        self.ground_height.value = c.ground_height
        self.friction.value = c.friction
        self.friction_value.value = round(c.friction_value, 2)
        self.velocity.value = c.velocity
        self.stiffness_scale.value = c.stiffness_scale
        self.frames.value = c.frames

    # --------------------------------------------------------------- actions
    def simulate(self, controls: Controls) -> bool:
        """Re-simulate the asset under the edits ``controls`` ask for and show the new frames; an
        impossible edit or an unstable simulation is reported in the GUI and leaves the frames as
        they were. Returns whether the new simulation is shown."""
        if not self._simulating.acquire(blocking=False):
            self.status.content = "a simulation is already running"
            return False
        try:
            self.simulate_button.disabled = True
            self.status.content = "simulating ..."
            t0 = time.perf_counter()
            try:
                scene = build_scene(self.asset, controls.frames, controls.to_edits(self.asset), self.max_springs)
            except SgausError as err:
                self.status.content = f"**not simulated:** {str(err).splitlines()[0]}"
                return False
            with self._lock:
                self.scene = scene
                self.frame_slider.max = max(scene.n_frames - 1, 1)
                self.frame_slider.disabled = scene.n_frames < 2
                frame = min(self.frame, scene.n_frames - 1)
                self.frame_slider.value = frame
                self.show_frame(frame)
                self._place_ground()
                self._colour_anchors()
            self.status.content = f"simulated in {time.perf_counter() - t0:.1f} s"
            return True
        finally:
            self.simulate_button.disabled = False
            self._simulating.release()

    def tick(self) -> None:
        """Advance the shown frame while "play" is on, at the simulation's real time (at most 30 fps)."""
        now = time.perf_counter()
        if not self.play.value or now < self._next_tick or self.scene.n_frames < 2:
            return
        self._next_tick = now + max(self.scene.frame_dt, 1.0 / 30.0)
        # assigning the slider's value runs its callback, which shows the frame
        self.frame_slider.value = (int(self.frame_slider.value) + 1) % self.scene.n_frames

    def stop(self) -> None:
        self.server.stop()


def start_viewer(run_or_asset, host: str = "127.0.0.1", port: int = 8080, n_frames: int | None = None,
                 max_springs: int = MAX_SPRINGS, log=print) -> Viewer:
    """Load the asset (a run directory, an asset directory or an :class:`Asset`), simulate it and
    start a viser server showing it; returns at once (the server runs in background threads).
    ``port=0`` lets the OS choose a free port; a busy port makes viser try the next ones."""
    require_viser()
    if not 0 <= int(port) <= 65535:
        raise SgausError(f"--port must be between 0 and 65535, got {port}")
    asset = run_or_asset if isinstance(run_or_asset, Asset) else load_asset(run_or_asset)
    n = default_frames(asset) if n_frames is None else int(n_frames)
    log(f"simulating {n} frames")
    scene = build_scene(asset, n, max_springs=max_springs)
    return Viewer(asset, scene, host=host, port=int(port), max_springs=max_springs, log=log)


def serve(run_or_asset, host: str = "127.0.0.1", port: int = 8080, n_frames: int | None = None,
          max_springs: int = MAX_SPRINGS, log=print) -> None:
    """Run the viewer until Ctrl-C."""
    viewer = start_viewer(run_or_asset, host, port, n_frames, max_springs, log)
    log(f"viewer at {viewer.url}  (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(0.01)
            viewer.tick()
    except KeyboardInterrupt:
        log("stopping the viewer")
    finally:
        viewer.stop()


__all__ = ["ViewerScene", "Controls", "Viewer", "ViewerUnavailable", "build_scene", "covariances_from_scales",
           "spring_pairs", "undirected_springs", "anchor_colours", "ground_grid_pose", "rotate",
           "start_viewer", "serve", "require_viser"]
