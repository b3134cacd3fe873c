"""`sgaus generate-mpm --capture real`: a synthetic *real capture*, written in both capture layouts,
with its ground truth kept aside.

The object is simulated with MLS-MPM as generate-mpm does (pipeline.generate), then expressed in
a calibration board's frame (z = 0 the floor, +z into it, so gravity is +z: the authors' board on
the floor) and recorded as a person with a phone and three cameras would record it:

* the static capture: ``static_views`` photos of the object at rest (its frame-0 particles) from
  the upper hemisphere, in an unknown similarity frame (random scale, rotation and translation, as
  COLMAP's arbitrary frame), a SIMPLE_RADIAL camera with a little barrel distortion, a grey table
  behind it; a COLMAP model of them in binary (``static/colmap/object/``) and text
  (``static/colmap_text/``), JPG images and PNG masks;
* the dynamic capture: ``views`` calibrated 16:9 views (OPENCV distortion, another exposure and
  white balance, a darker background), each starting a few frames early (its sync offset), as mp4
  videos (``views/<cam>.mp4``) and frames (``dynamic/videos_images/<cam>/``), with masks
  (``dynamic/videos_masks/<cam>/``), a chessboard-style ``dynamic/cameras_calib.json`` (rvecs,
  tvecs, mtx, dist), ``dynamic/sync.json`` and ``dynamic/sequences/object/0.json`` (hit_frame,
  the frame files of each camera);
* ``capture.json`` (sgaus' layout: the text model, the mp4 views, one view's extrinsics as
  rvec/tvec, one as a 3x4 and one as a 4x4 matrix);
* ``ground_truth/``: ``similarity.json`` (the static -> dynamic similarity p_dyn = s R p_static + t,
  the object's size and centre) and ``particles/<frame>.npz`` in the dynamic frame.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.data.cameras import Cameras, hemisphere_cameras, look_at, orbit_cameras
from pipeline.data.capture import CAPTURE_FORMAT
from pipeline.data.colmap import opencv_matrix
from pipeline.data.files import atomic_dir, write_json
from pipeline.generate import GenerateConfig, particle_colors, render_frame, simulate_object
from taichi_sim.errors import SgausError

# MPM's frame (y up, ground y = 0) -> the board's frame (z into the floor)
TO_BOARD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
STATIC_DIST_K = -0.03  # SIMPLE_RADIAL k of the static camera
DYNAMIC_DIST = (-0.04, 0.01, 0.001, -0.0005)  # OPENCV k1 k2 p1 p2 of the video cameras
EXPOSURE = (1.15, 1.0, 0.8)  # the videos' gain per channel relative to the photos
STATIC_BACKGROUND, DYNAMIC_BACKGROUND = 0.55, 0.2


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def distort_image(img: np.ndarray, K: np.ndarray, dist, interpolation=None) -> np.ndarray:
    """``img`` [H,W,C] of the pinhole camera K (sgaus convention) as the lens ``dist`` (OpenCV) shows it."""
    import cv2

    h, w = img.shape[:2]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    Kcv = opencv_matrix(K)
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    src = cv2.undistortPoints(pts, Kcv, np.asarray(dist, np.float64), P=Kcv).reshape(h, w, 2).astype(np.float32)
    out = cv2.remap(img, src[..., 0], src[..., 1], interpolation if interpolation is not None else cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(img.shape)


def _u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def _straight(rgb: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    return torch.where(alpha > 0, rgb / alpha.clamp_min(1e-6), torch.zeros_like(rgb)).clamp(0, 1).numpy()


def generate_capture(cfg: GenerateConfig, out, static_views: int = 60, static_resolution: int = 160,
                     seed: int = 0, progress: bool = True, log=None) -> Path:
    """Simulate ``cfg`` and write the capture described in the module docstring into ``out``
    (``cfg.views`` dynamic views ``cfg.resolution`` pixels wide at 16:9, ``cfg.frames`` frames of
    ``cfg.frame_dt``); atomic. Returns ``out``."""
    import cv2
    import imageio.v3 as iio
    import imageio_ffmpeg
    import pycolmap
    from tqdm.auto import tqdm

    cfg.validate()
    if static_views < 3:
        raise SgausError(f"--static-views must be at least 3, got {static_views}")
    if cfg.views < 2:
        raise SgausError(f"a capture needs at least 2 dynamic views, got {cfg.views}")
    rng = np.random.default_rng(seed)
    sim = simulate_object(cfg, progress=progress)
    if log:
        log(f"simulated {sim.obj.n_particles} particles, {cfg.frames} frames; first ground contact at frame "
            f"{sim.contact_frame}")
    pos = sim.positions.astype(np.float64) @ TO_BOARD.T  # [T,P,3] in the board's frame
    shown = sim.obj.surface
    colors = particle_colors(sim.obj)[shown]
    splat = 0.7 * sim.obj.spacing
    up = np.array([0.0, 0.0, -1.0])
    rest = pos[0]
    centre0 = 0.5 * (rest.min(0) + rest.max(0))
    size = float(np.max(rest.max(0) - rest.min(0)))

    # the hidden similarity: static frame = a Q p_board + b
    a = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
    Q = random_rotation(rng)
    b = rng.normal(size=3) * 1.5
    s_true, R_true, t_true = 1.0 / a, Q.T, -(Q.T @ b) / a  # static -> dynamic

    # cameras
    sw, sh = int(static_resolution), int(round(static_resolution * 3 / 4 / 2) * 2)
    scams = hemisphere_cameras(static_views, centre0, 2.2 * size, up, 50.0, sw, sh)
    dw, dh = int(cfg.resolution), int(round(cfg.resolution * 9 / 16 / 2) * 2)
    lo, hi = pos.min((0, 1)), pos.max((0, 1))
    lo[2] = min(lo[2], 0.0)  # keep the floor contact in view
    fy = 0.5 * dh / math.tan(math.radians(22.0))
    fov_x = math.degrees(2 * math.atan(0.5 * dw / fy))
    dist_to = 0.5 * float(np.linalg.norm(hi - lo)) * 1.15 / math.sin(math.radians(22.0))
    dcams = orbit_cameras(cfg.views, dist_to, target=tuple((lo + hi) / 2), elevation_deg=25.0, fov_deg=fov_x,
                          width=dw, height=dh, up=tuple(up), azimuth0_deg=20.0, elevation_jitter_deg=8.0,
                          prefix="C", digits=4)
    offsets = [(2 * i) % 5 for i in range(cfg.views)]
    out = Path(out)
    with atomic_dir(out) as tmp:
        # ---- static capture
        simg, smask = tmp / "static" / "images" / "object", tmp / "static" / "masks" / "object"
        simg.mkdir(parents=True)
        smask.mkdir(parents=True)
        Ks = scams.Ks[0].double().numpy()
        sdist = (STATIC_DIST_K, 0.0, 0.0, 0.0)
        with torch.no_grad():
            for c in tqdm(range(len(scams)), desc="static photos", disable=not progress, leave=False):
                rgb, alpha = render_frame(rest[shown], colors, splat, scams[c])
                al = alpha[0].numpy()
                img = _straight(rgb[0], alpha[0]) * al + STATIC_BACKGROUND * (1 - al)
                img = distort_image(img.astype(np.float32), Ks, sdist)
                m = distort_image(al.astype(np.float32), Ks, sdist)
                iio.imwrite(simg / f"{scams.names[c]}.JPG", _u8(img), extension=".jpg", quality=95)
                iio.imwrite(smask / f"{scams.names[c]}.png", _u8((m[..., 0] > 0.5).astype(np.float32)))
        recon = pycolmap.Reconstruction()
        recon.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_RADIAL", width=sw, height=sh,
                                                          params=[Ks[0, 0], Ks[0, 2], Ks[1, 2], STATIC_DIST_K],
                                                          camera_id=1))
        for c, name in enumerate(scams.names):
            V = scams.viewmats[c].double().numpy()
            Rc, tc = V[:3, :3], V[:3, 3]
            R_st, t_st = Rc @ Q.T, a * tc - Rc @ Q.T @ b  # the same camera in the static frame
            quat = _rotmat_to_xyzw(R_st)
            recon.add_image_with_trivial_frame(pycolmap.Image(name=f"{name}.JPG", camera_id=1, image_id=c + 1),
                                               pycolmap.Rigid3d(pycolmap.Rotation3d(quat), t_st))
        pick = rng.choice(len(rest), size=min(300, len(rest)), replace=False)
        for p in rest[pick]:
            recon.add_point3D(a * Q @ p + b, pycolmap.Track(), np.array([128, 128, 128], np.uint8))
        for folder, write in ((tmp / "static" / "colmap" / "object", recon.write_binary),
                              (tmp / "static" / "colmap_text", recon.write_text)):
            folder.mkdir(parents=True)
            write(str(folder))
        # ---- dynamic capture
        dyn = tmp / "dynamic"
        (tmp / "views").mkdir()
        seq = {"hit_frame": sim.contact_frame, "fps": 1.0 / cfg.frame_dt}
        calib, sync = {}, {}
        for c, name in enumerate(dcams.names):
            (dyn / "videos_images" / name).mkdir(parents=True)
            (dyn / "videos_masks" / name).mkdir(parents=True)
            K = dcams.Ks[c].double().numpy()
            V = dcams.viewmats[c].double().numpy()
            calib[name] = {"rvecs": cv2.Rodrigues(V[:3, :3])[0].reshape(3).tolist(), "tvecs": V[:3, 3].tolist(),
                           "mtx": opencv_matrix(K).tolist(), "dist": list(DYNAMIC_DIST)}
            sync[name] = offsets[c]
            files = []
            writer = imageio_ffmpeg.write_frames(str(tmp / "views" / f"{name}.mp4"), (dw, dh), fps=1.0 / cfg.frame_dt,
                                                 macro_block_size=1, quality=9, ffmpeg_log_level="error")
            writer.send(None)
            with torch.no_grad():
                for k in tqdm(range(offsets[c] + cfg.frames), desc=f"video {name}", disable=not progress, leave=False):
                    f = max(0, k - offsets[c])  # held still at frame 0 before the drop
                    rgb, alpha = render_frame(pos[f][shown], colors, splat, dcams[c])
                    al = alpha[0].numpy()
                    img = np.clip(_straight(rgb[0], alpha[0]) * np.array(EXPOSURE), 0, 1) * al \
                        + DYNAMIC_BACKGROUND * (1 - al)
                    img = distort_image(img.astype(np.float32), K, DYNAMIC_DIST)
                    m = distort_image(al.astype(np.float32), K, DYNAMIC_DIST)[..., 0] > 0.5
                    fname = f"{k:04d}.jpg"
                    iio.imwrite(dyn / "videos_images" / name / fname, _u8(img), extension=".jpg", quality=95)
                    iio.imwrite(dyn / "videos_masks" / name / f"{k:04d}.png", _u8(m.astype(np.float32)))
                    writer.send(np.ascontiguousarray(_u8(img)))
                    if k >= offsets[c]:
                        files.append(fname)
            writer.close()
            seq[name] = files
        (dyn / "sequences" / "object").mkdir(parents=True)
        write_json(dyn / "cameras_calib.json", calib)
        write_json(dyn / "sync.json", sync)
        write_json(dyn / "sequences" / "object" / "0.json", seq)
        # ---- ground truth
        gt = tmp / "ground_truth" / "particles"
        gt.mkdir(parents=True)
        for f in range(cfg.frames):
            np.savez_compressed(gt / f"{f:03d}.npz", x=pos[f].astype(np.float32), surface=sim.obj.surface)
        write_json(tmp / "ground_truth" / "similarity.json", {
            "static_to_dynamic": {"scale": s_true, "rotation": R_true.tolist(), "translation": t_true.tolist()},
            "object_size": size, "object_center_dynamic": centre0.tolist(),
            "object_center_static": (a * Q @ centre0 + b).tolist(),
            "youngs_modulus": cfg.youngs_modulus, "contact_frame": sim.contact_frame, "offsets": sync})
        # ---- capture.json
        views = []
        for c, name in enumerate(dcams.names):
            e = calib[name]
            V = dcams.viewmats[c].double().numpy()
            pose = ({"rvec": e["rvecs"], "tvec": e["tvecs"]} if c % 3 == 0 else
                    {"world_to_camera": V[:3].tolist()} if c % 3 == 1 else {"world_to_camera": V.tolist()})
            views.append({"name": name, "video": f"views/{name}.mp4", "masks": f"dynamic/videos_masks/{name}",
                          "K": e["mtx"], "dist": e["dist"], **pose, "offset": offsets[c]})
        write_json(tmp / "capture.json", {
            "format": CAPTURE_FORMAT,
            "static": {"colmap": "static/colmap_text", "images": "static/images/object", "masks": "static/masks/object"},
            "fps": 1.0 / cfg.frame_dt, "frames": cfg.frames, "fit_frames": cfg.fit_frames,
            **({"contact_frame": sim.contact_frame} if sim.contact_frame is not None else {}),
            "views": views, "gravity": (TO_BOARD @ np.asarray(cfg.gravity)).tolist(), "ground": "board",
            "ground_truth": "ground_truth",
            "generator": {"name": "sgaus generate-mpm --capture real", "options": cfg.to_dict(),
                          "static_views": static_views, "static_resolution": static_resolution, "seed": seed}})
    return out


def _rotmat_to_xyzw(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_quat()  # x, y, z, w (scipy's order, pycolmap's too)
