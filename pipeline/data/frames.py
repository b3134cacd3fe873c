"""Frames of a dataset at the scale a stage works at, loaded on first use and evicted on request."""
from __future__ import annotations

import torch

from pipeline.data.datasets import VideoDataset


class FrameCache:
    """Downscaled RGBA frames of every camera, loaded on first use (never the whole video at once
    unless it is used); :meth:`evict` drops frames a caller is done with."""

    def __init__(self, ds: VideoDataset, scale: float):
        self.ds, self.scale, self._frames = ds, scale, {}
        self.cameras = ds.cameras_at(scale)

    def rgba(self, frame: int) -> torch.Tensor:  # [C,H,W,4]
        if frame not in self._frames:
            self._frames[frame] = self.ds.frame(frame, scale=self.scale)
        return self._frames[frame]

    def rgb(self, frame: int, cams: list[int] | None = None) -> torch.Tensor:
        """RGB [C,H,W,3] composited on black (as the renders are)."""
        img = self.rgba(frame)
        img = img if cams is None else img[cams]
        return img[..., :3] * img[..., 3:4] if img.shape[-1] == 4 else img

    def alpha(self, frame: int) -> torch.Tensor:  # [C,H,W,1]
        return self.rgba(frame)[..., 3:4]

    def evict(self, frame: int) -> None:
        """Forget ``frame`` (a caller that reads each frame once keeps memory flat)."""
        self._frames.pop(frame, None)
