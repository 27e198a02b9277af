"""Class-preserving augmentation of normalised training images (B, 3, H, W), drawn from torch's RNG.

TrainConfig.augment turns on flips and 2-pixel shifts; color_jitter and crop_scale add colour jitter
and random resized crops. Each draw happens only when its option is on, so the flips-and-shifts
path draws exactly the random numbers it always did (a seeded run repeats bit for bit).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.student.model import CIFAR_MEAN, CIFAR_STD


def augment_pixels(x: torch.Tensor, *, shift: int = 2, color_jitter: float = 0.0,
                   crop_scale: float = 1.0) -> torch.Tensor:
    """Random resized crop (crop_scale < 1), horizontal flip, shift (reflect-padded crop) and colour
    jitter (color_jitter > 0) per image; same shape, and jittered pixels stay in the [0, 1] range."""
    if crop_scale < 1.0:
        x = random_resized_crop(x, min_scale=crop_scale)
    b, _, h, w = x.shape
    flip = torch.rand(b) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b)).tolist()
    x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return colour_jitter(x, strength=color_jitter) if color_jitter > 0 else x


def random_resized_crop(x: torch.Tensor, *, min_scale: float) -> torch.Tensor:
    """Per image: a crop of min_scale..1 of the area at aspect 3/4..4/3, resized back bilinearly."""
    b, _, h, w = x.shape
    scale = min_scale + (1 - min_scale) * torch.rand(b)
    log_ratio = (2 * torch.rand(b) - 1) * math.log(4 / 3)
    pos = torch.rand(2, b)
    out = []
    for i in range(b):
        ratio = math.exp(log_ratio[i].item())
        cw = max(1, min(w, round(math.sqrt(scale[i].item() * ratio) * w)))
        ch = max(1, min(h, round(math.sqrt(scale[i].item() / ratio) * h)))
        y0, x0 = int(pos[0, i].item() * (h - ch + 1)), int(pos[1, i].item() * (w - cw + 1))
        crop = x[i:i + 1, :, y0:y0 + ch, x0:x0 + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(out)


def colour_jitter(x: torch.Tensor, *, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1-s, 1+s] per image, applied to the
    un-normalised [0, 1] pixels (clamped there) and normalised back."""
    b = x.shape[0]
    mean = torch.tensor(CIFAR_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=x.dtype).view(1, 3, 1, 1)
    f = (1 + strength * (2 * torch.rand(3, b, 1, 1, 1) - 1)).to(x.dtype)
    rgb = (x * std + mean).clamp(0, 1) * f[0]
    grey = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = ((rgb - grey) * f[1] + grey).clamp(0, 1)
    lum = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]).clamp(0, 1)
    rgb = ((rgb - lum) * f[2] + lum).clamp(0, 1)
    return (rgb - mean) / std
