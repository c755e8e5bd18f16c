"""FEMBA (Tegon et al., arXiv 2502.06438): a bidirectional-Mamba EEG foundation model.

Facts from the paper and its official code (pulp-bio/BioFoundation at 1923999: ``models/FEMBA.py``,
``config/``, ``tasks/pretrain_task.py``, ``criterion/pretrain_criterion.py``,
``docs/model/FEMBA.md``); the code here is our own. Line numbers are of those files.

- Input: EEG windows ``x`` [batch, channel, time] in the pipeline's scaled units (the official
  pipeline divides by a fixed range, ``util/train_utils.py:44-51``); the paper's are 22 TCP
  bipolar channels x 1280 samples (5 s at 256 Hz; ``config/model/FEMBA_pretrain.yaml:23-24``).
- Patch embedding: ``Conv2d(1, embed_dim, kernel = stride = (2 channels, 16 samples))`` over the
  [channel, time] plane (``FEMBA.py:62-92``, patch/stride ``FEMBA.py:222-223``), reshaped so a
  token is one 16-sample time step of all channel pairs: ``d_model = embed_dim x channels / 2``
  (385 for tiny), ``time / 16`` tokens (80 for 5 s). Learned positions, zero-initialised
  (``FEMBA.py:250``).
- Blocks (``FEMBA.py:252-260, 275-279``): ``x = LayerNorm(x + Mamba_fwd(x) + flip(Mamba_rev(flip
  x)))``, the reverse Mamba reading the time-reversed sequence ("add" strategy, ``FEMBA.py:
  51-59``); Mamba with ``expand = 4`` (``FEMBA.py:253``, ``config/model/FEMBA_*.yaml:25``) and
  mamba_ssm's defaults d_state 16, d_conv 4, dt_rank ceil(d_model / 16).
- Sizes (``docs/model/FEMBA.md:80-85``, paper Table): tiny (2 blocks, embed_dim 35, 7.8 M),
  base (12, 35, 47.7 M), large (4, 79, 77.8 M), huge (20, 79, 386 M).
- Pre-training (:class:`FEMBAPretrain`): 60% of the (2 x 16) patches set to zero in the input
  (``config/experiment/FEMBA_pretrain.yaml:43-45``; ``tasks/pretrain_task.py:53-87``;
  ``FEMBA.py:269-271``); a conv decoder (``FEMBA.py:147-193``: a 31 x 31 "same" Conv2d over the
  [token, feature] plane, no bias (kernel ``FEMBA.py:220``), then ``ConvTranspose2d(embed_dim, 1,
  kernel = stride = patch)`` back to [channel, time]); Smooth-L1 (beta 1, mean) on the masked
  samples only (``criterion/pretrain_criterion.py:62-65``, ``config/criterion/
  pretrain_criterion.yaml:23``).
- Classification (:class:`FEMBAClassifier`, ``FEMBA.py:95-144``): ``Linear(d_model, 256) -> GELU
  -> Mamba(256, expand 2) -> mean over tokens -> Linear(256, n_classes)``.

Parameter names follow the official module (``patch_embed.proj``, ``pos_embed``,
``mamba_blocks.i.mamba_fwd / mamba_rev``, ``norm_layers.i``, ``decoder.dec_conv / conv_transpose``,
``classifier.fc1 / mamba_1 / fc3``; the Mamba blocks use mamba_ssm's names), ours under an
``encoder.`` prefix for the shared part, so an official state dict maps by prefixing keys.

Departures: the official task draws one set of masked patches per batch
(``tasks/pretrain_task.py:77-85``); we draw one per window (the same count, ``int(0.6 x
n_patches)``), so a batch sees more mask patterns. Channels must be a multiple of 2 (the
official patching would silently drop the last one); trailing samples that do not fill a
16-sample patch are dropped (as its floor division, ``FEMBA.py:80-81``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.errors import UserInputError
from mindzoo.models.du_in import classification_outputs
from mindzoo.models.mamba_scan import Mamba, mamba_parameter_count
from mindzoo.models.trainable import EphysModel, InitRun, Stage, StageInit

# (n_blocks, embed_dim) per size: docs/model/FEMBA.md:80-85 of the official code.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_blocks": 2, "embed_dim": 35},
    "base": {"n_blocks": 12, "embed_dim": 35},
    "large": {"n_blocks": 4, "embed_dim": 79},
    "huge": {"n_blocks": 20, "embed_dim": 79},
}
# Parameters the paper reports per size (docs/model/FEMBA.md:80-85; paper Table I).
PAPER_PARAMETERS: dict[str, float] = {"tiny": 7.8e6, "base": 47.7e6, "large": 77.8e6, "huge": 386e6}

# What `create_model("femba*")` builds for: 22 TCP bipolar channels, 5 s at 256 Hz, 2 classes
# (TUAB normal/abnormal).
REFERENCE_RECORDING = RecordingInfo({"sub-01": 22}, n_times=1280, sfreq=256.0, n_classes=2)
REFERENCE_SHAPES = {"info": REFERENCE_RECORDING}

# Settings that define the encoder's weights (a classifier initialised from a pre-training run
# takes them from that run).
ENCODER_KEYS = (
    "preset",
    "embed_dim",
    "n_blocks",
    "patch_channels",
    "patch_samples",
    "expand",
    "d_state",
    "d_conv",
)


class FEMBAConfig(BaseModel):
    """FEMBA settings; the defaults are the paper's, sizes by ``preset`` (tiny / base / large /
    huge); ``embed_dim`` / ``n_blocks`` override the preset's."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "base", "large", "huge"] = Field(
        "tiny", description="Model size (n_blocks, embed_dim) of the paper."
    )
    embed_dim: int | None = Field(None, ge=1, description="Filters per channel pair (preset's).")
    n_blocks: int | None = Field(None, ge=1, description="Bidirectional Mamba blocks (preset's).")
    patch_channels: int = Field(2, ge=1, description="Channels per patch.")
    patch_samples: int = Field(16, ge=1, description="Samples per patch (62.5 ms at 256 Hz).")
    expand: int = Field(4, ge=1, description="Mamba expansion d_inner / d_model in the encoder.")
    d_state: int = Field(16, ge=1, description="Mamba state size.")
    d_conv: int = Field(4, ge=1, description="Mamba causal conv width.")
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="Fraction of patches masked.")
    decoder_kernel: int = Field(31, ge=1, description="Odd kernel of the decoder's 'same' conv.")
    head_hidden: int = Field(256, ge=1, description="Width of the classification head.")
    head_expand: int = Field(2, ge=1, description="Mamba expansion in the classification head.")
    layer_decay: float = Field(
        0.75, gt=0, le=1, description="Layer-wise lr decay of the classifier's encoder blocks."
    )
    freeze_encoder: bool = Field(
        False, description="Classifier: train the head only (linear-probe mode)."
    )
    scan: Literal["auto", "parallel", "sequential", "kernel"] = Field(
        "auto", description="Selective scan (see mindzoo.models.mamba_scan)."
    )
    chunk: int = Field(8, ge=2, description="Time steps per chunk of the parallel scan.")

    def size(self) -> tuple[int, int]:
        """(n_blocks, embed_dim) after the preset and its overrides."""
        preset = PRESETS[self.preset]
        return self.n_blocks or preset["n_blocks"], self.embed_dim or preset["embed_dim"]


def grid_of(config: FEMBAConfig, n_channels: int, n_times: int) -> tuple[int, int]:
    """Patch grid (channel pairs, time tokens) of [n_channels, n_times] windows; a one-line
    error when the window does not fit."""
    if n_channels % config.patch_channels:
        raise UserInputError(
            f"FEMBA patches {config.patch_channels} channels at a time; the recordings have "
            f"{n_channels} (set model.patch_channels to a divisor or change the montage)"
        )
    if n_times < config.patch_samples:
        raise UserInputError(
            f"Windows of {n_times} samples are shorter than one FEMBA patch "
            f"({config.patch_samples} samples)"
        )
    return n_channels // config.patch_channels, n_times // config.patch_samples


def _channels_of(info: RecordingInfo) -> int:
    counts = set(info.channels.values())
    if len(counts) != 1:
        raise UserInputError(
            f"FEMBA needs one montage for every subject; the store has channel counts "
            f"{sorted(counts)} (prepare it with one channel set)"
        )
    return counts.pop()


# ------------------------------------------------------------------------------------ encoder
class BiMamba(nn.Module):
    """Forward Mamba plus a Mamba over the time-reversed sequence, summed: [b, L, d] -> [b, L, d]."""

    def __init__(self, d_model: int, **mamba: int | str) -> None:
        super().__init__()
        self.mamba_fwd = Mamba(d_model, **mamba)  # type: ignore[arg-type]
        self.mamba_rev = Mamba(d_model, **mamba)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mamba_fwd(x) + self.mamba_rev(x.flip(1)).flip(1)


class PatchEmbed(nn.Module):
    """[batch, channel, time] -> tokens [batch, time / patch_samples, embed_dim x channel pairs].

    The token's feature ``e x n_pairs + p`` is filter ``e`` on channel pair ``p`` (the official
    reshape, ``FEMBA.py:86-92``).
    """

    def __init__(self, embed_dim: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x.unsqueeze(1))  # [batch, embed_dim, pairs, tokens]
        return h.flatten(1, 2).transpose(1, 2)


class FEMBAEncoder(nn.Module):
    """Patch embedding, learned positions and bidirectional Mamba blocks with residual and
    LayerNorm: [batch, channel, time] -> tokens [batch, n_tokens, d_model]."""

    def __init__(self, config: FEMBAConfig, n_channels: int, n_times: int) -> None:
        super().__init__()
        n_blocks, embed_dim = config.size()
        self.patch = (config.patch_channels, config.patch_samples)
        self.grid = grid_of(config, n_channels, n_times)
        self.embed_dim = embed_dim
        self.d_model = embed_dim * self.grid[0]
        self.patch_embed = PatchEmbed(embed_dim, self.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[1], self.d_model))
        mamba = {
            "expand": config.expand,
            "d_state": config.d_state,
            "d_conv": config.d_conv,
            "scan": config.scan,
            "chunk": config.chunk,
        }
        self.mamba_blocks = nn.ModuleList(BiMamba(self.d_model, **mamba) for _ in range(n_blocks))
        self.norm_layers = nn.ModuleList(nn.LayerNorm(self.d_model) for _ in range(n_blocks))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, channel, time] without the trailing samples no patch covers."""
        return x[..., : x.shape[-1] // self.patch[1] * self.patch[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(self.crop(x))
        if h.shape[1] != self.grid[1]:
            raise UserInputError(
                f"FEMBA was built for {self.grid[1] * self.patch[1]}-sample windows (learned "
                f"positions); got {x.shape[-1]} samples"
            )
        h = h + self.pos_embed
        for block, norm in zip(self.mamba_blocks, self.norm_layers, strict=True):
            h = norm(h + block(h))
        return h


# -------------------------------------------------------------------------------- pre-training
class FEMBADecoder(nn.Module):
    """Tokens [batch, n_tokens, d_model] -> signals [batch, channel, n_tokens x patch_samples]."""

    def __init__(self, embed_dim: int, n_pairs: int, kernel: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.embed_dim, self.n_pairs = embed_dim, n_pairs
        self.dec_conv = nn.Conv2d(1, 1, kernel, padding=(kernel - 1) // 2, bias=False)
        self.conv_transpose = nn.ConvTranspose2d(embed_dim, 1, kernel_size=patch, stride=patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = same_conv2d(tokens.unsqueeze(1), self.dec_conv.weight).squeeze(1)  # as tokens
        h = h.transpose(1, 2).unflatten(1, (self.embed_dim, self.n_pairs))
        return self.conv_transpose(h).squeeze(1)


def same_conv2d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=(k - 1) // 2)`` for one channel in and out (``x`` [batch,
    1, H, W], ``weight`` [1, 1, k, k], k odd), via FFT off CUDA: torch's CPU backward of a
    1-channel 31 x 31 conv took 1.2 s for 4 tiny windows (80 x 385 plane), the FFT 6 ms."""
    if x.is_cuda:
        return F.conv2d(x, weight, padding=(weight.shape[-1] - 1) // 2)
    k = weight.shape[-1]
    height, width = x.shape[-2:]
    size = (height + k - 1, width + k - 1)
    spectrum = torch.fft.rfft2(x, s=size) * torch.fft.rfft2(weight.flip(-1, -2), s=size)
    full = torch.fft.irfft2(spectrum, s=size)  # full correlation; keep the centred part
    return full[..., (k - 1) // 2 : (k - 1) // 2 + height, (k - 1) // 2 : (k - 1) // 2 + width]


def masked_smooth_l1(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Smooth-L1 (beta 1) averaged over the masked samples only; all [batch, channel, time],
    ``mask`` boolean (True = hidden from the encoder)."""
    return F.smooth_l1_loss(reconstruction[mask], target[mask], reduction="mean")


class FEMBAPretrain(EphysModel):
    """Masked reconstruction: zero ``mask_ratio`` of the patches, encode, decode, Smooth-L1 on
    the masked samples."""

    kind = "ephys-pretrain"

    def __init__(self, config: FEMBAConfig, info: RecordingInfo) -> None:
        super().__init__()
        self.config, self.info = config, info
        self.encoder = FEMBAEncoder(config, _channels_of(info), info.n_times)
        self.decoder = FEMBADecoder(
            self.encoder.embed_dim, self.encoder.grid[0], config.decoder_kernel, self.encoder.patch
        )

    @property
    def n_masked(self) -> int:
        """Patches masked per window: ``int(mask_ratio x n_patches)`` (as the official task)."""
        return int(self.encoder.grid[0] * self.encoder.grid[1] * self.config.mask_ratio)

    def patch_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Boolean [batch, channel pairs, n_tokens]: exactly :attr:`n_masked` True per window."""
        pairs, tokens = self.encoder.grid
        scores = torch.rand(batch, pairs * tokens, generator=generator)
        ranks = scores.argsort(1).argsort(1)
        return (ranks < self.n_masked).view(batch, pairs, tokens)

    def sample_mask(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch mask [batch, pairs, tokens] -> sample mask [batch, channel, time] (cropped)."""
        rows, cols = self.encoder.patch
        return patches.repeat_interleave(rows, 1).repeat_interleave(cols, 2)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruction [batch, channel, time'] of ``x`` [batch, channel, time] with the
        samples of ``mask`` (sample mask, [batch, channel, time']) set to zero."""
        x = self.encoder.crop(x)
        return self.decoder(self.encoder(x.masked_fill(mask, 0.0)))

    def forward(
        self, x: torch.Tensor, subject: str | None = None, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``loss``: Smooth-L1 on masked samples; ``loss_visible``: on the others (a log).

        Training draws masks from torch's global generator; eval mode always draws the same
        ones (seed 0), so validation losses of different epochs compare."""
        generator = None if self.training else torch.Generator().manual_seed(0)
        mask = self.sample_mask(self.patch_mask(x.shape[0], generator)).to(x.device)
        target = self.encoder.crop(x)
        reconstruction = self.reconstruct(x, mask)
        return {
            "loss": masked_smooth_l1(reconstruction, target, mask),
            "loss_visible": masked_smooth_l1(reconstruction, target, ~mask).detach(),
        }


# ------------------------------------------------------------------------------ classification
class FEMBAHead(nn.Module):
    """[batch, n_tokens, d_model] -> [batch, n_out]: Linear -> GELU -> Mamba -> mean -> Linear."""

    def __init__(self, d_model: int, n_out: int, config: FEMBAConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, config.head_hidden)
        self.activation1 = nn.GELU()
        self.mamba_1 = Mamba(
            config.head_hidden,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.head_expand,
            scan=config.scan,
            chunk=config.chunk,
        )
        self.fc3 = nn.Linear(config.head_hidden, n_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.mamba_1(self.activation1(self.fc1(tokens))).mean(1))


class FEMBAClassifier(EphysModel):
    """Encoder (random, or a pre-training run's) and the Mamba classification head; logits
    [batch, n_classes] with cross-entropy (the official "bc"/"mcc" protocols)."""

    kind = "ephys-classifier"

    def __init__(self, config: FEMBAConfig, info: RecordingInfo) -> None:
        super().__init__()
        self.config, self.info = config, info
        self.encoder = FEMBAEncoder(config, _channels_of(info), info.n_times)
        self.classifier = FEMBAHead(self.encoder.d_model, info.n_classes, config)

    def start_stage(self, stage: Stage, train: Any, resuming: bool) -> None:
        """Frozen-encoder mode (``freeze_encoder``): only the head trains. (The official flag
        ``finetuning.freeze_layers`` sets ``requires_grad = True`` on every parameter either
        way, ``tasks/finetune_task.py:117-121``: its runs train end to end.)"""
        self.encoder.requires_grad_(not self.config.freeze_encoder)

    def optimizer_groups(self, params: Sequence[nn.Parameter]) -> list[dict[str, Any]]:
        """One group per learning-rate scale, as the official layer-wise decay
        (``tasks/finetune_task.py:271-281``, factor 0.75 in ``config/experiment/
        FEMBA_finetune.yaml:33``): block ``i`` of ``n`` (and its LayerNorm) at ``decay^(n - i)``,
        everything else (patch embedding, positions, head) at 1. The scale is in each group's
        ``lr_scale``; the trainer multiplies its lr by it."""
        wanted = {id(p) for p in params}
        n_blocks = len(self.encoder.mamba_blocks)
        groups: dict[float, list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if id(param) not in wanted:
                continue
            parts = name.split(".")
            scale = 1.0
            if parts[:2] in (["encoder", "mamba_blocks"], ["encoder", "norm_layers"]):
                scale = self.config.layer_decay ** (n_blocks - int(parts[2]))
            groups.setdefault(scale, []).append(param)
        return [{"params": ps, "lr_scale": scale} for scale, ps in sorted(groups.items())]

    def logits(self, x: torch.Tensor, subject: str | None = None) -> torch.Tensor:
        """Class scores [batch, n_classes] of windows ``x`` [batch, channel, time] (one model
        for every subject: ``subject`` is accepted as the ephys runner passes it, and unused)."""
        return self.classifier(self.encoder(x))

    def forward(
        self, x: torch.Tensor, subject: str | None = None, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return classification_outputs(self.logits(x), y)


def build_femba(config: FEMBAConfig, info: RecordingInfo, stage: str) -> EphysModel:
    """The module of ``stage`` ("pretrain" or "cls") for ``info``'s recordings (the factory)."""
    if stage == "pretrain":
        return FEMBAPretrain(config, info)
    if stage == "cls":
        return FEMBAClassifier(config, info)
    raise ValueError(f"unknown FEMBA stage {stage!r}")


def femba_parameter_count(
    config: FEMBAConfig,
    n_channels: int = 22,
    n_times: int = 1280,
    stage: str = "encoder",
    n_classes: int = 2,
) -> int:
    """Parameters of FEMBA's ``stage`` ("encoder", "pretrain": + decoder, "cls": + head),
    computed without building it (the base and huge sizes take seconds and GBs to build)."""
    n_blocks, embed_dim = config.size()
    pairs, tokens = grid_of(config, n_channels, n_times)
    d_model = embed_dim * pairs
    patch = config.patch_channels * config.patch_samples
    mamba = mamba_parameter_count(d_model, config.d_state, config.d_conv, config.expand)
    total = embed_dim * patch + embed_dim + tokens * d_model + n_blocks * (2 * mamba + 2 * d_model)
    if stage == "pretrain":
        total += config.decoder_kernel**2 + embed_dim * patch + 1
    elif stage == "cls":
        hidden = config.head_hidden
        total += d_model * hidden + hidden + hidden * n_classes + n_classes
        total += mamba_parameter_count(hidden, config.d_state, config.d_conv, config.head_expand)
    elif stage != "encoder":
        raise ValueError(f"unknown stage {stage!r}")
    return total


# ---------------------------------------------------------------- weights from elsewhere
_ENCODER_PARTS = ("patch_embed.", "pos_embed", "mamba_blocks.", "norm_layers.")


def official_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of an official FEMBA state dict (``models/FEMBA.py``'s module, or a Lightning
    checkpoint's ``state_dict`` with its ``model.`` prefix) renamed to ours: the encoder's parts
    go under ``encoder.``, ``decoder.*`` and ``classifier.*`` stay."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("model.")
        out[f"encoder.{key}" if key.startswith(_ENCODER_PARTS) else key] = value
    return out


def load_encoder(target: FEMBAEncoder, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy the ``encoder.*`` weights of ``state`` into ``target``; a one-line error naming the
    first key that is missing or of another shape (e.g. learned positions of another length)."""
    source = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    own = target.state_dict()
    for key, value in own.items():
        if key not in source or source[key].shape != value.shape:
            got = "missing" if key not in source else f"of shape {tuple(source[key].shape)}"
            raise UserInputError(
                f"The encoder in {where} does not fit this model ({key} {got}, needs "
                f"{tuple(value.shape)}); use the pre-training run's window length and size"
            )
    target.load_state_dict({k: source[k] for k in own})


def _cls_prepare(model: dict[str, Any], init: InitRun) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = init.config["settings"]["model"]
    return {**model, **{k: settings[k] for k in ENCODER_KEYS if k in settings}}, {}


def _cls_apply(model: nn.Module, init: InitRun) -> None:
    load_encoder(model.encoder, init.weights(), str(init.path))


# ``femba`` (the classifier) optionally starts from a ``femba-pretrain`` run's encoder.
INIT = StageInit(("femba-pretrain",), False, _cls_prepare, _cls_apply)
