"""The real-capture loss (paper Eq. 19), on masks as the authors' real captures use it
(``IMG_IS_MASK``): the renders and targets are silhouettes (white Gaussians on black against the
masks, both as 3-channel images), which is also how sgaus copes with the static and dynamic
captures' different exposure and white balance: colour never enters the dynamic fit.

    L = (1 - lambda_dssim) L1 + lambda_dssim D-SSIM + lambda_center L_center + lambda_percep L_percep

with lambda_dssim = 0.8, lambda_center = 1.0, lambda_percep = 0.1 (paper Sec. 5.2). L_center is the
distance between the intensity-weighted centres of render and target (in image widths and heights,
mean over the views); L_percep the mean absolute difference of VGG16 features (relu1_2, relu2_2,
relu3_3, Johnson et al.'s perceptual loss) of ImageNet-normalised images.

VGG16 weights are never downloaded: :func:`load_vgg16_features` reads a torchvision ``vgg16`` state
dict the user has (``--vgg-weights PATH``; the ``features.*`` entries up to relu3_3 are needed);
without it the perceptual term is left out (one notice). :class:`PerceptualLoss` takes any module
of the same interface (a ``torch.nn.Sequential`` of convolutions and ReLUs, tapped by index), so it
is tested with a small randomly initialised one.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.fit.registration import mask_centres
from render import l1_dssim_loss
from taichi_sim.errors import SgausError

# torchvision's vgg16 "features": 3x3 convolutions (channels) and 2x2 max pools ("M")
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_TAPS = (3, 8, 15)  # indices of relu1_2, relu2_2, relu3_3 in that Sequential
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features(last: int = max(VGG16_TAPS)) -> torch.nn.Sequential:
    """torchvision's ``vgg16().features`` layers 0..last (same indices, so its state dict loads)."""
    layers: list[torch.nn.Module] = []
    channels = 3
    for spec in VGG16_LAYOUT:
        if spec == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(channels, spec, 3, padding=1), torch.nn.ReLU(inplace=False)]
            channels = spec
    return torch.nn.Sequential(*layers[:last + 1])


def load_vgg16_features(path) -> torch.nn.Sequential:
    """VGG16 features up to relu3_3 from a torchvision vgg16 state dict at ``path`` (frozen, eval)."""
    path = Path(path)
    if not path.is_file():
        raise SgausError(f"--vgg-weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle, zip or torch error: not a state dict
        raise SgausError(f"--vgg-weights {path}: not a torch state dict ({err.__class__.__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net = vgg16_features()
    wanted = {f"features.{k}": v for k, v in net.state_dict().items()}
    missing = [k for k in wanted if k not in state]
    if missing:
        raise SgausError(f"--vgg-weights {path}: not a torchvision vgg16 state dict (no {missing[0]!r})")
    bad = [k for k in wanted if tuple(state[k].shape) != tuple(wanted[k].shape)]
    if bad:
        raise SgausError(f"--vgg-weights {path}: {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, "
                         f"vgg16 needs {tuple(wanted[bad[0]].shape)}")
    net.load_state_dict({k[len("features."):]: state[k] for k in wanted})
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class PerceptualLoss(torch.nn.Module):
    """Mean absolute difference of the features at ``taps`` of ``features`` (a Sequential),
    on images [..., H, W, 3] in [0, 1], ImageNet-normalised first."""

    def __init__(self, features: torch.nn.Sequential, taps=VGG16_TAPS):
        super().__init__()
        if max(taps) >= len(features):
            raise SgausError(f"perceptual loss: tap {max(taps)} beyond the network's {len(features)} layers")
        self.features, self.taps = features, tuple(taps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        def prep(x):
            x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float()
            return (x - self.mean) / self.std

        x, y = prep(pred), prep(target)
        loss = x.new_zeros(())
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in self.taps:
                loss = loss + (x - y.detach()).abs().mean()
            if i >= max(self.taps):
                break
        return loss / len(self.taps)


class CaptureLoss:
    """Eq. 19 on images [C,H,W,3] in [0,1] (the silhouettes in mask mode): ``loss(pred, target)``.
    ``perceptual``: a :class:`PerceptualLoss`, or None to leave the term out."""

    def __init__(self, lambda_dssim: float = 0.8, lambda_center: float = 1.0, lambda_percep: float = 0.1,
                 perceptual: PerceptualLoss | None = None):
        if not 0.0 <= lambda_dssim <= 1.0 or lambda_center < 0 or lambda_percep < 0:
            raise SgausError("capture loss: lambda_dssim must lie in [0, 1] and the other weights be >= 0")
        self.lambda_dssim, self.lambda_center, self.lambda_percep = lambda_dssim, lambda_center, lambda_percep
        self.perceptual = perceptual

    def terms(self, pred: torch.Tensor, target: torch.Tensor) -> dict:
        out = {"image": l1_dssim_loss(pred, target, self.lambda_dssim)}
        if self.lambda_center:
            out["center"] = (mask_centres(pred.mean(-1, keepdim=True)) -
                             mask_centres(target.mean(-1, keepdim=True))).norm(dim=-1).mean()
        if self.perceptual is not None and self.lambda_percep:
            out["percep"] = self.perceptual(pred, target)
        return out

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = self.terms(pred, target)
        return t["image"] + self.lambda_center * t.get("center", 0.0) + self.lambda_percep * t.get("percep", 0.0)


def capture_loss(lambda_dssim: float, lambda_center: float, lambda_percep: float, vgg_weights: str | None,
                 log=print) -> CaptureLoss:
    """The Eq. 19 loss; the perceptual term only with ``vgg_weights`` (else a one-line notice)."""
    perceptual = None
    if lambda_percep:
        if vgg_weights:
            perceptual = PerceptualLoss(load_vgg16_features(vgg_weights))
        elif log:
            log("perceptual loss left out: no --vgg-weights given (VGG16 weights are never downloaded)")
    return CaptureLoss(lambda_dssim, lambda_center, lambda_percep, perceptual)
