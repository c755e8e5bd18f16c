"""`diffusion`: the embedded reconstruction backend's model, a small conditional pixel-space
diffusion model trained offline on CPU (by :mod:`mindzoo.training.diffusion`).

Built from a config with diffusers' ``UNet2DModel``; nothing is downloaded. The pieces, top to
bottom:

- images (uint8 [n, S, S, 3], S = ``image_size``) are scaled to [-1, 1] and pixel-unshuffled by
  ``patch`` (a 64x64x3 image becomes 32x32x12), so the UNet runs at a quarter of the pixels while
  still producing full-resolution images — the cheapest way to a 64x64 model on a CPU;
- the condition (one feature vector per image, e.g. efficientnet-lite0 ``global`` [1280]) is
  standardised with the training set's mean and std, projected by a 2-layer MLP to the UNet's
  time-embedding width and added to the timestep embedding (``class_embed_type="identity"``;
  with ``resnet_time_scale_shift="scale_shift"`` it modulates every ResNet block, FiLM-style);
- classifier-free guidance: during training the projected condition is replaced by a learned
  null embedding with probability ``condition_dropout``; sampling mixes the two predictions;
- training: DDPM noising (cosine schedule) and an MSE on the ``prediction_type`` target
  (:func:`denoising_loss`);
- sampling (:mod:`mindzoo.reconstruction.embedded`): DDIM (deterministic, ``eta = 0``, trailing timestep spacing, so the first step
  starts from pure noise), optionally started part-way from a low-level image (img2img):
  with ``strength`` s, the init image is noised to the timestep after which ``round(s * steps)``
  steps remain, and only those are run.

Weights are a directory: ``model.safetensors`` (state dict, including the condition statistics)
+ ``config.json`` (the :class:`EmbeddedConfig`, the condition width); no pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn import functional as F

from mindzoo.atomic import honour_umask
from mindzoo.errors import UserInputError
from mindzoo.tensorfile import load_state, save_state

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BACKEND_NAME = "embedded"
# What `create_model("diffusion")` builds for (`braindecode-cli models`): a 1280-d condition
# (efficientnet-lite0 global).
REFERENCE_SHAPES = {"condition_dim": 1280}


class EmbeddedConfig(BaseModel):
    """Architecture, condition and noise schedule of the embedded diffusion model."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(64, ge=8, description="side of the generated images (pixels)")
    patch: int = Field(2, ge=1, description="pixel-unshuffle factor: the UNet runs at size/patch")
    channels: list[int] = Field(
        default_factory=lambda: [32, 48, 64], min_length=1, description="UNet widths per level"
    )
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(32, ge=1, description="for the attention at the lowest level")
    norm_groups: int = Field(16, ge=1)
    condition_space: str = "efficientnet-lite0"
    condition_kind: str = "global"
    condition_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="for classifier-free guidance"
    )
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    train_timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"

    def check(self) -> None:
        """Shape constraints pydantic cannot express; a UserInputError names the fix."""
        if self.image_size % (self.patch * 2 ** (len(self.channels) - 1)):
            raise UserInputError(
                f"image_size {self.image_size} must be divisible by patch * 2^(levels-1) = "
                f"{self.patch * 2 ** (len(self.channels) - 1)}; change model.image_size, "
                "model.patch or model.channels"
            )
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise UserInputError(
                f"model.channels {self.channels} must be multiples of model.norm_groups "
                f"({self.norm_groups})"
            )


class EmbeddedTrainConfig(BaseModel):
    """Optimisation of :func:`mindzoo.training.diffusion.train_embedded`: AdamW, linear warm-up then cosine decay to 0."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(500, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0


class EmbeddedDiffusion(nn.Module):
    """UNet + condition projection + null embedding; ``forward`` predicts the training target."""

    def __init__(self, config: EmbeddedConfig, condition_dim: int) -> None:
        super().__init__()
        from diffusers import UNet2DModel  # heavy import, only when a model is built

        config.check()
        self.config = config
        self.condition_dim = condition_dim
        levels = len(config.channels)
        width = config.channels[0] * 4  # UNet2DModel's time-embedding width
        pixels_in = 3 * config.patch**2
        self.unet = UNet2DModel(
            sample_size=config.image_size // config.patch,
            in_channels=pixels_in,
            out_channels=pixels_in,
            block_out_channels=tuple(config.channels),
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_groups,
            class_embed_type="identity",
            resnet_time_scale_shift="scale_shift",
        )
        self.project = nn.Sequential(
            nn.Linear(condition_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.null_condition = nn.Parameter(torch.zeros(width))
        # Training-set statistics of the condition, saved with the weights.
        self.register_buffer("condition_mean", torch.zeros(condition_dim))
        self.register_buffer("condition_std", torch.ones(condition_dim))

    def set_condition_statistics(self, conditions: np.ndarray) -> None:
        """Standardise conditions with these (training) vectors' mean and std per dimension."""
        values = torch.as_tensor(conditions, dtype=torch.float32)
        self.condition_mean.copy_(values.mean(0))
        self.condition_std.copy_(values.std(0).clamp_min(1e-6))

    def embed(self, condition: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Projected conditions [n, width]; rows where ``drop`` is True get the null embedding."""
        embedded = self.project((condition - self.condition_mean) / self.condition_std)
        if drop is not None:
            embedded = torch.where(drop[:, None], self.null_condition.expand_as(embedded), embedded)
        return embedded

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's prediction for unshuffled samples [n, 3*patch^2, s, s] at ``timestep``."""
        return self.unet(sample, timestep, class_labels=embedding).sample

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range float images [n, S, S, 3] -> [-1, 1], pixel-unshuffled [n, 3p^2, S/p, S/p]."""
        x = images.permute(0, 3, 1, 2) / 127.5 - 1.0
        return F.pixel_unshuffle(x, self.config.patch)

    def to_images(self, sample: torch.Tensor) -> np.ndarray:
        """Model-space samples -> uint8 images [n, S, S, 3]."""
        x = F.pixel_shuffle(sample, self.config.patch).clamp(-1, 1)
        return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def noise_scheduler(config: EmbeddedConfig):  # -> diffusers.DDPMScheduler
    """The training noise schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )


def denoising_loss(
    model: EmbeddedDiffusion,
    x0: torch.Tensor,
    condition: torch.Tensor,
    generator: torch.Generator,
    scheduler: Any = None,
) -> torch.Tensor:
    """Mean squared error of the model's prediction at random timesteps and noise.

    ``x0`` is model-space ([-1, 1], unshuffled); ``generator`` draws the timesteps, the noise
    and the condition dropout, so a fixed generator gives a fixed evaluation of the loss.
    """
    scheduler = scheduler or noise_scheduler(model.config)
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, model.config.train_timesteps, (n,), generator=generator)
    drop = torch.rand(n, generator=generator) < model.config.condition_dropout
    noisy = scheduler.add_noise(x0, noise, t)
    target = {
        "epsilon": noise,
        "sample": x0,
        "v_prediction": scheduler.get_velocity(x0, noise, t) if n else noise,
    }[model.config.prediction_type]
    return F.mse_loss(model(noisy, t, model.embed(condition, drop)), target)


def save_embedded(model: EmbeddedDiffusion, directory: Path, extra: dict[str, Any]) -> None:
    """Write ``model.safetensors`` + ``config.json`` (with ``extra`` facts) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_state(state, directory / WEIGHTS_FILE)
    honour_umask(directory / WEIGHTS_FILE)
    config = {
        "backend": BACKEND_NAME,
        "model": model.config.model_dump(mode="json"),
        "condition_dim": model.condition_dim,
        **extra,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_embedded_model(weights_dir: Path) -> EmbeddedDiffusion:
    """A trained :class:`EmbeddedDiffusion` from a `train diffusion` directory (eval mode)."""
    weights_dir = Path(weights_dir)
    config_path, weights_path = weights_dir / CONFIG_FILE, weights_dir / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserInputError(
                f"{path} is missing; pass the --out directory of `braindecode-cli train diffusion`"
            )
    saved = json.loads(config_path.read_text())
    if saved.get("backend") != BACKEND_NAME:
        raise UserInputError(
            f"{config_path} is not an embedded diffusion model (backend {saved.get('backend')!r})"
        )
    try:
        config = EmbeddedConfig(**saved["model"])
    except ValidationError as err:
        raise UserInputError(
            f"Invalid model config in {config_path}: {err.errors()[0]['msg']}"
        ) from None
    model = EmbeddedDiffusion(config, int(saved["condition_dim"]))
    model.load_state_dict(load_state(weights_path))
    return model.eval()
