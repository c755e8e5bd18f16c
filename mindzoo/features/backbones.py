"""Optional metric backbones for the reconstruction table, loaded only from local weight files.

MindEye2's ``final_evaluations`` scores reconstructions in the feature spaces of six ImageNet or
CLIP networks. Their weights cannot ship with mindzoo, so each backbone is used only when the
user passes a local file or directory (``--metric-weights NAME=PATH``); otherwise its column is
left blank with the reason from :func:`unavailable_reason`.

Every backbone takes the evaluation images of :func:`mindzoo.evaluation.image_metrics.eval_images`
(float ``[n, 3, 256, 256]`` in [0, 1]; MindEye2 brings all images to 256 first), resizes them
bilinearly to its own input size, normalises them and returns ``{layer: [n, ...]}`` arrays.
The input sizes, normalisations and layers are MindEye2's (from the torchvision weight transforms
it copied, without centre crop):

- ``alexnet``: AlexNet, 256 px, ImageNet norm; ``features.4`` -> Alex(2), ``features.11`` ->
  Alex(5). File: torchvision's IMAGENET1K_V1 state dict (.pth or .safetensors).
- ``inception``: Inception v3, 342 px, ImageNet norm; ``avgpool`` -> Incep. File: torchvision's
  IMAGENET1K_V1 state dict.
- ``clip``: CLIP ViT-L/14, 224 px, CLIP norm; projected image embedding -> CLIP. A transformers
  model directory (see :mod:`mindzoo.features.clip`).
- ``efficientnet-b1``: EfficientNet-B1, 255 px, ImageNet norm; ``avgpool`` -> Eff. File:
  torchvision's IMAGENET1K_V2 state dict.
- ``swav``: ResNet-50 trained with SwAV, 224 px, ImageNet norm; ``avgpool`` -> SwAV. File:
  ``swav_800ep_pretrain.pth.tar`` (torch.hub ``facebookresearch/swav`` ``resnet50``).

AlexNet is our own module with torchvision's parameter names, so it needs no torchvision.
Inception, EfficientNet-B1 and SwAV are built with torchvision when it is importable (it is an
optional dependency); CLIP goes through :mod:`mindzoo.features.clip`. Weight files are read with
``safetensors`` or ``torch.load(weights_only=True)``: loading never executes code.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mindzoo.errors import UserInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Extractor: float images [n, 3, s, s] (normalised) -> {layer: tensor [n, ...]}.
Extractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``[n, 3, h, w]`` to ``size`` x ``size``, antialiased when shrinking.

    torchvision's ``Resize`` antialiases by default; when enlarging, antialiased and plain
    bilinear agree to 4e-6, and plain is 10x faster, so antialiasing is used only to shrink.
    """
    if x.shape[-2:] == (size, size):
        return x
    shrinks = size < max(x.shape[-2:])
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinks
    )


@dataclass(frozen=True)
class MetricBackbone:
    """One metric network: how to feed it, which layers fill which table columns, how to load it.

    ``columns`` maps an output layer to its table column; ``input_size`` is the square side the
    256-pixel evaluation images are resized to; ``weights_hint`` says what file the user must
    pass; ``load(path, device)`` returns an extractor (see :data:`Extractor`).
    """

    name: str
    columns: dict[str, str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_hint: str
    needs_torchvision: bool
    load: Callable[[Path, str], Extractor]


# ------------------------------------------------------------------------------- loading
def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``-d state dict, never running code.

    A checkpoint that wraps its weights in ``{"state_dict": ...}`` is unwrapped, and the
    ``module.`` prefix of DataParallel checkpoints (SwAV's) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Metric weights file {path} does not exist; pass a local file path")
    if path.suffix == ".safetensors":
        from mindzoo.tensorfile import load_state  # a damaged file: one line naming it

        state = load_state(path)
    else:
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as error:  # pickle errors come in many types; all mean "not tensors"
            raise UserInputError(
                f"Cannot read {path} as a tensors-only state dict ({type(error).__name__}); "
                "pass a torch.save-d state dict or a .safetensors file"
            ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserInputError(
            f"{path} does not hold a state dict of tensors; pass the network's weights file"
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, skip=()) -> None:
    """Load ``state`` into ``model``: every parameter/buffer except those under ``skip``
    prefixes must be present with the right shape; extra keys (heads we do not use) are ignored."""
    wanted = {k for k in model.state_dict() if not k.startswith(tuple(skip))}
    missing = sorted(wanted - state.keys())
    if missing:
        raise UserInputError(
            f"{path} lacks {len(missing)} weights of {type(model).__name__} (first: {missing[0]}); "
            "pass the original torchvision-layout weights file"
        )
    try:
        model.load_state_dict({k: state[k] for k in wanted}, strict=not skip)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise UserInputError(f"{path} does not match {type(model).__name__}: {first}") from error


# ------------------------------------------------------------------------------- AlexNet
ALEXNET_LAYERS = {"features.4": "Alex(2)", "features.11": "Alex(5)"}
ALEXNET_LAST_INDEX = 11  # no need to run the last max-pool


class AlexNetFeatures(nn.Module):
    """The convolutional part of torchvision's AlexNet, with its parameter names.

    ``features.<i>`` follows torchvision's ``nn.Sequential`` indices, so its state dict loads
    as is. MindEye2's "AlexNet(2)" is the output of ``features.4`` (ReLU after the second conv;
    ``[n, 192, 27, 27]`` at 224 px, ``[n, 192, 31, 31]`` at 256 px) and "AlexNet(5)" that of
    ``features.11`` (ReLU after the fifth conv; ``[n, 256, 13, 13]`` / ``[n, 256, 15, 15]``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """ImageNet-normalised ``[n, 3, s, s]`` -> ``{"features.4": ..., "features.11": ...}``."""
        out = {}
        for index, layer in enumerate(self.features[: ALEXNET_LAST_INDEX + 1]):
            x = layer(x)
            if f"features.{index}" in ALEXNET_LAYERS:
                out[f"features.{index}"] = x
        return out


def load_alexnet(path: Path, device: str = "cpu") -> AlexNetFeatures:
    """AlexNet conv layers from a torchvision-layout state dict (classifier keys are ignored)."""
    model = AlexNetFeatures()
    _load_into(model, load_state_dict_file(path), Path(path))
    return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------- torchvision backbones
def torchvision_available() -> bool:
    """Whether the optional torchvision package can be imported."""
    return importlib.util.find_spec("torchvision") is not None


def _torchvision_avgpool(name: str, path: Path, device: str) -> Extractor:
    """Inception v3 / EfficientNet-B1 / SwAV ResNet-50 up to ``avgpool``, via torchvision.

    Untested in mindzoo's CI (torchvision is not installed there). Inception is built with
    ``transform_input=True`` because torchvision builds it so whenever pretrained weights are
    used, and MindEye2 used them; SwAV's checkpoint has no ``fc`` (it is a random head there).
    """
    from torchvision import models
    from torchvision.models.feature_extraction import create_feature_extractor

    if name == "inception":
        model, skip = (
            models.inception_v3(weights=None, transform_input=True, init_weights=False),
            (),
        )
    elif name == "efficientnet-b1":
        model, skip = models.efficientnet_b1(weights=None), ()
    else:
        model, skip = models.resnet50(weights=None), ("fc.",)
    _load_into(model, load_state_dict_file(path), Path(path), skip=skip)
    model = model.to(device).eval().requires_grad_(False)
    return create_feature_extractor(model, return_nodes={"avgpool": "avgpool"})


# ------------------------------------------------------------------------------------ CLIP
def _clip_image_embeds(path: Path, device: str) -> Extractor:
    """CLIP image embeddings (the projected ``image_embeds``, as OpenAI ``encode_image``)."""
    from mindzoo.features.clip import load_clip_vision

    # MindEye2's preprocessing (bilinear resize of the whole image, no crop) replaces the
    # loader's CLIPImageProcessor-style one, so only the model is used.
    clip = load_clip_vision(path, device)
    size = clip.image_size

    def extract(x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = resize_square(x, size)  # a no-op for ViT-L/14 (224 px)
        return {"image_embeds": clip.model(pixel_values=x).image_embeds}

    return extract


def _clip_module_available() -> bool:
    return importlib.util.find_spec("mindzoo.features.clip") is not None


# -------------------------------------------------------------------------------- registry
BACKBONES: dict[str, MetricBackbone] = {
    "alexnet": MetricBackbone(
        name="alexnet",
        columns=ALEXNET_LAYERS,
        input_size=256,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_hint="torchvision AlexNet IMAGENET1K_V1 state dict, .pth or .safetensors",
        needs_torchvision=False,
        load=load_alexnet,
    ),
    "inception": MetricBackbone(
        name="inception",
        columns={"avgpool": "Incep"},
        input_size=342,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_hint="torchvision Inception_V3 IMAGENET1K_V1 state dict",
        needs_torchvision=True,
        load=lambda path, device: _torchvision_avgpool("inception", path, device),
    ),
    "clip": MetricBackbone(
        name="clip",
        columns={"image_embeds": "CLIP"},
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        weights_hint="transformers CLIP ViT-L/14 directory, e.g. openai/clip-vit-large-patch14",
        needs_torchvision=False,
        load=_clip_image_embeds,
    ),
    "efficientnet-b1": MetricBackbone(
        name="efficientnet-b1",
        columns={"avgpool": "Eff"},
        input_size=255,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_hint="torchvision EfficientNet_B1 IMAGENET1K_V2 state dict",
        needs_torchvision=True,
        load=lambda path, device: _torchvision_avgpool("efficientnet-b1", path, device),
    ),
    "swav": MetricBackbone(
        name="swav",
        columns={"avgpool": "SwAV"},
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_hint="SwAV ResNet-50 checkpoint swav_800ep_pretrain.pth.tar",
        needs_torchvision=True,
        load=lambda path, device: _torchvision_avgpool("swav", path, device),
    ),
}


def check_metric_weights(weights: dict[str, Path] | None) -> dict[str, Path]:
    """Validate a ``{backbone: path}`` mapping: known names, existing paths."""
    weights = dict(weights or {})
    for name, path in weights.items():
        if name not in BACKBONES:
            valid = ", ".join(BACKBONES)
            raise UserInputError(f"Unknown metric backbone {name!r}; choose one of: {valid}")
        if not Path(path).exists():
            raise UserInputError(
                f"Metric weights for {name} not found at {path}; pass {BACKBONES[name].weights_hint}"
            )
    return {name: Path(path) for name, path in weights.items()}


def parse_metric_weights(items: list[str]) -> dict[str, Path]:
    """``["alexnet=/w/alexnet.pth", ...]`` (the CLI's ``--metric-weights``) -> checked dict."""
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserInputError(
                f"--metric-weights {item!r} is not NAME=PATH; e.g. alexnet=/weights/alexnet.pth"
            )
        weights[name.strip()] = Path(path.strip()).expanduser()
    return check_metric_weights(weights)


def unavailable_reason(name: str, weights: dict[str, Path]) -> str | None:
    """Why backbone ``name`` cannot be used with these weights, or ``None`` if it can."""
    backbone = BACKBONES[name]
    needs = f"--metric-weights {name}=PATH ({backbone.weights_hint})"
    if backbone.needs_torchvision and not torchvision_available():
        return f"needs the optional torchvision package (not installed) and {needs}"
    if name not in weights:
        return f"needs {needs}"
    if name == "clip" and not _clip_module_available():
        return "needs mindzoo.features.clip (CLIP loader), which this install lacks"
    return None


def backbone_features(
    backbone: MetricBackbone,
    extractor: Extractor,
    images: torch.Tensor,
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Per-layer features ``{layer: float32 [n, features]}`` of evaluation images.

    ``images`` are float ``[n, 3, 256, 256]`` in [0, 1]; each batch is resized bilinearly to the
    backbone's input size and normalised, as MindEye2's preprocessing does.
    """
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    chunks: dict[str, list[np.ndarray]] = {layer: [] for layer in backbone.columns}
    for start in range(0, len(images), batch_size):
        x = resize_square(images[start : start + batch_size], backbone.input_size)
        with torch.no_grad():
            out = extractor(((x - mean) / std).to(device))
        for layer in backbone.columns:
            chunks[layer].append(out[layer].float().flatten(1).cpu().numpy())
    return {layer: np.concatenate(parts) for layer, parts in chunks.items()}
