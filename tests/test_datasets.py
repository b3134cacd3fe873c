"""Dataset writer and readers: camera conventions in every layout, lazy images, clear errors.

The ground truth is written by hand: two cameras 3 units from the origin, one on +z and one
on +x, both looking at the origin with y up, f = 10 px, 16 x 16 images, principal point at
the image centre (8, 8). A world point therefore lands at a pixel we can work out on paper.
"""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pipeline.data.cameras import Cameras, look_at
from pipeline.data.datasets import load_dataset, write_transforms

W = H = 16
F = 10.0
K = [[F, 0.0, 8.0], [0.0, F, 8.0], [0.0, 0.0, 1.0]]
# OpenGL camera-to-world, columns: right, up, backward (camera +z), position
C2W_FRONT = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]  # at +z, looking down -z
C2W_SIDE = [[0, 0, 1, 3], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]]  # at +x, looking down -x
POINT = torch.tensor([[0.0, 0.6, -0.3]])
# front: right = +x, up = +y, depth 3.3; side: right = -z, up = +y, depth 3
EXPECTED = torch.tensor([[8 + F * 0.0 / 3.3, 8 - F * 0.6 / 3.3], [8 + F * 0.3 / 3.0, 8 - F * 0.6 / 3.0]])
N_FRAMES = 3


def _image(camera: int, frame: int) -> np.ndarray:
    """RGBA uint8: black, transparent, with one opaque pixel where POINT projects, whose red
    value encodes the frame and green the camera."""
    img = np.zeros((H, W, 4), np.uint8)
    u, v = (int(x) for x in EXPECTED[camera])
    img[v, u] = (50 + 40 * frame, 100 + 50 * camera, 7, 255)
    return img


def _write_images(root, names, pattern):
    for c, name in enumerate(names):
        for f in range(N_FRAMES):
            p = root / pattern.format(camera=name, frame=f)
            p.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(p, _image(c, f))


def _hand_cameras() -> Cameras:
    views = torch.stack([look_at((0, 0, 3), (0, 0, 0)), look_at((3, 0, 0), (0, 0, 0))])
    return Cameras(views, torch.tensor(K), W, H, ["front", "side"])


def _check(ds, names):
    assert ds.cameras.names == names
    assert ds.n_frames == N_FRAMES
    assert (ds.cameras.width, ds.cameras.height) == (W, H)
    uv, z = ds.cameras.project(POINT)
    torch.testing.assert_close(uv[:, 0], EXPECTED, atol=1e-5, rtol=0)
    assert torch.all(z > 0)
    for c in range(2):
        for f in range(N_FRAMES):
            img = ds.image(c, f)
            assert img.shape == (H, W, 4) and img.dtype == torch.float32
            u, v = (int(x) for x in uv[c, 0])
            assert img[v, u, 3] == 1.0 and img[..., 3].sum() == 1.0
            assert img[v, u, 0] == pytest.approx((50 + 40 * f) / 255)
            assert img[v, u, 1] == pytest.approx((100 + 50 * c) / 255)


def test_transforms_round_trip(tmp_path):
    cams = _hand_cameras()
    path = write_transforms(tmp_path, cams, N_FRAMES, 0.04)
    doc = json.loads(path.read_text())
    assert (doc["fl_x"], doc["fl_y"], doc["cx"], doc["cy"], doc["w"], doc["h"]) == (F, F, 8.0, 8.0, W, H)
    assert len(doc["frames"]) == 2 * N_FRAMES
    side = next(e for e in doc["frames"] if e["camera"] == "side" and e["frame"] == 2)
    np.testing.assert_allclose(side["transform_matrix"], C2W_SIDE, atol=1e-6)
    assert side["time"] == pytest.approx(0.08)
    assert side["file_path"] == "images/side/002.png" and side["mask_path"] == "masks/side/002.png"
    _write_images(tmp_path, cams.names, "images/{camera}/{frame:03d}.png")
    ds = load_dataset(tmp_path)
    assert ds.layout == "transforms.json" and ds.frame_dt == pytest.approx(0.04)
    _check(ds, ["front", "side"])
    torch.testing.assert_close(ds.cameras.viewmats, cams.viewmats, atol=1e-6, rtol=0)
    assert ds.frame(1).shape == (2, H, W, 4)
    assert ds.frame(1, cameras=["side"]).shape == (1, H, W, 4)


def test_transforms_per_frame_intrinsics_and_masks(tmp_path):
    cams = _hand_cameras()
    cams.Ks[1, 0, 0] = 12.0
    doc = json.loads(write_transforms(tmp_path, cams, 1, 0.1).read_text())
    assert "fl_x" not in doc and doc["frames"][1]["fl_x"] == 12.0
    for c, name in enumerate(cams.names):  # RGB images, alpha from the mask files
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "masks" / name).mkdir(parents=True)
        iio.imwrite(tmp_path / "images" / name / "000.png", _image(c, 0)[..., :3])
        mask = np.zeros((H, W), np.uint8)
        mask[:4] = 255
        iio.imwrite(tmp_path / "masks" / name / "000.png", mask)
    ds = load_dataset(tmp_path / "transforms.json")
    torch.testing.assert_close(ds.cameras.Ks, cams.Ks)
    img = ds.image("side", 0)
    assert img[:4, :, 3].min() == 1.0 and img[4:, :, 3].max() == 0.0


def test_camera_json_layout(tmp_path):
    names = ["0", "1"]
    entries = [{"camera": n, "K": K, "c2w": c2w} for n, c2w in zip(names, (C2W_FRONT, C2W_SIDE))]
    (tmp_path / "camera.json").write_text(json.dumps(entries))
    _write_images(tmp_path, names, "{camera}/{frame:03d}.png")
    ds = load_dataset(tmp_path)
    assert ds.layout == "camera.json" and ds.frame_dt is None
    _check(ds, names)


def test_pac_nerf_layout(tmp_path):
    entries = []
    for f in range(N_FRAMES):
        for c, c2w in enumerate((C2W_FRONT, C2W_SIDE)):
            entries.append({"file_path": f"./data/r_{c}_{f}.png", "c2w": c2w[:3], "intrinsic": K, "time": f / 24})
    entries.reverse()  # the reader must sort by time, not rely on the order of the list
    (tmp_path / "all_data.json").write_text(json.dumps(entries))
    _write_images(tmp_path, ["0", "1"], "data/r_{camera}_{frame}.png")
    ds = load_dataset(tmp_path)
    assert ds.layout == "all_data.json" and ds.frame_dt == pytest.approx(1 / 24)
    # cameras appear in order of first appearance: the reversed list starts with camera 1
    order = [ds.cameras.names.index("r_0"), ds.cameras.names.index("r_1")]
    ds.cameras = ds.cameras[order]
    ds.files = [ds.files[i] for i in order]
    ds.masks = [ds.masks[i] for i in order]
    _check(ds, ["r_0", "r_1"])


def test_opengl_opencv_round_trip():
    c2w = torch.tensor([C2W_FRONT, C2W_SIDE], dtype=torch.float64)
    cams = Cameras.from_opengl_c2w(c2w, torch.tensor(K).expand(2, 3, 3), W, H)
    torch.testing.assert_close(cams.opengl_c2w(), c2w, atol=1e-6, rtol=0)
    # OpenCV: the camera looks down +z of its own frame, so the origin is 3 units in front
    assert torch.allclose(cams.viewmats[:, 2, 3], torch.tensor([3.0, 3.0]))


def test_scaled_images_and_cameras(tmp_path):
    cams = _hand_cameras()
    write_transforms(tmp_path, cams, N_FRAMES, 0.04)
    _write_images(tmp_path, cams.names, "images/{camera}/{frame:03d}.png")
    ds = load_dataset(tmp_path)
    half = ds.cameras_at(0.5)
    assert (half.width, half.height) == (8, 8)
    img = ds.image(0, 0, scale=0.5)
    assert img.shape == (8, 8, 4)
    # area resampling keeps the total alpha (one pixel -> a quarter of a pixel)
    assert img[..., 3].sum() == pytest.approx(0.25)
    uv, _ = half.project(POINT)
    torch.testing.assert_close(uv[:, 0], EXPECTED / 2, atol=1e-5, rtol=0)
    u, v = (int(x) for x in uv[0, 0])
    assert img[v, u, 3] == pytest.approx(0.25)
    assert ds.image(0, 0, scale=2.0).shape == (32, 32, 4)


# ----------------------------------------------------------------------------- bad datasets
def _good(tmp_path):
    cams = _hand_cameras()
    write_transforms(tmp_path, cams, N_FRAMES, 0.04)
    _write_images(tmp_path, cams.names, "images/{camera}/{frame:03d}.png")
    return tmp_path


def test_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="transforms.json, camera.json, all_data.json"):
        load_dataset(tmp_path)


def test_malformed_json(tmp_path):
    (tmp_path / "transforms.json").write_text("{\"frames\": [")
    with pytest.raises(ValueError, match=r"transforms.json: malformed JSON"):
        load_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text("{\"frames\": [{\"file_path\": \"a.png\"}]}")
    with pytest.raises(ValueError, match=r"transforms.json: frames\[0\] needs"):
        load_dataset(tmp_path)


def test_missing_image(tmp_path):
    _good(tmp_path)
    (tmp_path / "images" / "side" / "000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/side/000.png"):
        load_dataset(tmp_path)
    _write_images(tmp_path, ["front", "side"], "images/{camera}/{frame:03d}.png")
    (tmp_path / "images" / "front" / "002.png").unlink()  # a later frame: found when it is read
    ds = load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"images/front/002.png"):
        ds.image("front", 2)


def test_images_of_different_sizes(tmp_path):
    _good(tmp_path)
    iio.imwrite(tmp_path / "images" / "side" / "000.png", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"images/side/000.png: image is 8x8, expected 16x16"):
        load_dataset(tmp_path)
    _write_images(tmp_path, ["front", "side"], "images/{camera}/{frame:03d}.png")
    iio.imwrite(tmp_path / "images" / "side" / "001.png", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"images/side/001.png: image is 8x8"):
        load_dataset(tmp_path).image(1, 1)
    (tmp_path / "images" / "side" / "001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"001.png: cannot read the image"):
        load_dataset(tmp_path).image(1, 1)


def test_camera_without_frames(tmp_path):
    entries = [{"camera": n, "K": K, "c2w": c2w} for n, c2w in zip("ab", (C2W_FRONT, C2W_SIDE))]
    (tmp_path / "camera.json").write_text(json.dumps(entries))
    _write_images(tmp_path, ["a"], "{camera}/{frame:03d}.png")
    with pytest.raises(FileNotFoundError, match=r"camera 'b' not found: .*/b"):
        load_dataset(tmp_path)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"camera 'b' has no frames"):
        load_dataset(tmp_path)
    iio.imwrite(tmp_path / "b" / "001.png", _image(1, 1))
    with pytest.raises(ValueError, match=r"camera.json: camera 'b' has no frame 0"):
        load_dataset(tmp_path)
    iio.imwrite(tmp_path / "b" / "000.png", _image(1, 0))
    with pytest.raises(ValueError, match=r"camera.json: camera 'b' lacks frame 2 of 3"):
        load_dataset(tmp_path)
    entries[1]["K"] = [[1, 0], [0, 1]]
    (tmp_path / "camera.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"camera.json: entry 1 K must be 3x3"):
        load_dataset(tmp_path)
