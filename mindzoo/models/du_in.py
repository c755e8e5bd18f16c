"""Du-IN (Zheng et al., NeurIPS 2024): sEEG word decoding with a discrete codex and masked modelling.

Facts from the paper and its official code (liulab-repository/Du-IN: ``models/duin``,
``params/duin_params.py``); the code here is our own. Three stages share one encoder:

1. ``du-in-vqvae`` (:class:`DuINVQVAE`): encoder -> vector quantizer with a cosine-similarity
   codebook (l2-normalised codes and queries, EMA updates, k-means init on the first batch)
   -> transformer decoder -> per-token linear head back to the signal; loss = MSE + commitment.
2. ``du-in-mae`` (:class:`DuINMAE`): a *fresh* encoder (the paper re-initialises it) predicts the
   codebook index of each masked patch, as assigned by the frozen stage-1 model. Each trial is
   seen twice, with a random 50% patch mask and its complement, so every patch is predicted once
   from a view in which it is hidden; only masked positions count in the loss.
3. ``du-in-cls`` (:class:`DuINClassifier`): encoder (random, or the stage-2 encoder) ->
   flatten -> 128 (ReLU) -> classes.

The encoder (:class:`DuINEncoder`): per-subject linear map over channels -> ``d_neural`` (16)
virtual channels; the time axis is cut into patches of ``patch_seconds`` (100 ms) and each patch
goes through three Conv1d + BatchNorm blocks (filters 128, 128, 16; the first strided so that a
patch yields ``patch_steps`` = 10 outputs: kernel 19, stride 10, padding 9 at 1000 Hz, scaled
with the sampling rate), flattened to one token of ``d_model`` = 10 x 16 = 160; fixed sin-cos
time embedding; post-norm transformer layers with LayerNorm on queries and keys.

Shapes: signals ``x`` [batch, channel, time]; tokens [batch, patch, d_model]; trailing samples
that do not fill a whole patch are dropped. Departures from the official code: the conv blocks
have no activation, as upstream (its TODO); the classifier has no final sigmoid before the
cross-entropy and no contrastive term; the reconstruction head is one linear map per token
(equivalent to a transposed conv with kernel = stride = patch length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.errors import UserInputError
from mindzoo.models.trainable import EphysModel

# What `create_model("du-in-*")` builds for (`braindecode-cli models`): one Du-IN subject, the
# paper's 10 selected channels, 3 s at 1000 Hz, 61 words.
REFERENCE_RECORDING = RecordingInfo({"sub-01": 10}, n_times=3000, sfreq=1000.0, n_classes=61)
REFERENCE_SHAPES = {"info": REFERENCE_RECORDING}

# Settings that define the encoder's weights: a stage initialised from an earlier run takes them
# from that run, so the weights fit.
ENCODER_KEYS = (
    "d_neural",
    "patch_seconds",
    "patch_steps",
    "conv_filters",
    "n_layers",
    "n_heads",
    "d_head",
    "d_ff",
)


class DuINConfig(BaseModel):
    """Du-IN settings; the defaults are the paper's (Table 5), the presets are CPU-sized."""

    model_config = ConfigDict(extra="forbid")

    d_neural: int = Field(16, ge=1, description="Virtual channels of the per-subject linear map.")
    patch_seconds: float = Field(0.1, gt=0, description="Patch (token) length in seconds.")
    patch_steps: int = Field(10, ge=1, description="Outputs per patch of the strided first conv.")
    conv_filters: list[int] = Field(
        [128, 128, 16], min_length=1, description="Filters of the tokenizer's conv blocks."
    )
    n_layers: int = Field(8, ge=1, description="Encoder transformer layers.")
    n_heads: int = Field(8, ge=1, description="Attention heads.")
    d_head: int = Field(64, ge=1, description="Width of one attention head.")
    d_ff: int = Field(320, ge=1, description="Feed-forward width.")
    attn_dropout: float = Field(0.2, ge=0, lt=1, description="Dropout on attention weights.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on residual branches.")
    codebook_size: int = Field(2048, ge=2, description="Codes in the VQ codebook.")
    d_codex: int = Field(64, ge=1, description="Width of a code.")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="EMA decay of codebook updates.")
    beta: float = Field(1.0, ge=0, description="Weight of the commitment loss.")
    kmeans_iters: int = Field(10, ge=0, description="k-means iterations of the codebook init.")
    dead_code_threshold: float = Field(
        0.0,
        ge=0,
        description="Restart codes whose EMA count falls below this at a batch vector (0: never).",
    )
    n_decoder_layers: int = Field(4, ge=1, description="VQ-VAE decoder transformer layers.")
    mask_ratio: float = Field(0.5, gt=0, lt=1, description="Fraction of patches masked (mae).")
    cls_hidden: int = Field(128, ge=1, description="Hidden units of the classification head.")
    cls_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the class layer.")


# ------------------------------------------------------------------------------- building blocks
class SubjectLinear(nn.Module):
    """Per-subject linear map over channels: [batch, n_ch(subject), time] -> [batch, d_out, time]."""

    def __init__(self, channels: dict[str, int], d_out: int) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({s: nn.Linear(n, d_out) for s, n in channels.items()})

    def forward(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        if subject not in self.layers:
            raise UserInputError(
                f"Subject {subject} was not in this model's training set ({', '.join(self.layers)})"
            )
        return self.layers[subject](x.transpose(1, 2)).transpose(1, 2)


def first_conv_geometry(patch_len: int, patch_steps: int) -> tuple[int, int, int]:
    """(kernel, stride, padding) of the strided first conv: 19/10/9 for 100-sample patches.

    stride = patch_len / patch_steps (rounded), kernel = 2 * stride - 1, padding = stride - 1,
    so a patch yields ceil(patch_len / stride) outputs.
    """
    stride = max(1, round(patch_len / patch_steps))
    return 2 * stride - 1, stride, stride - 1


class SubjectBatchNorm(nn.Module):
    """BatchNorm1d with one set of running statistics per subject and a shared affine map.

    Du-IN trains one subject at a time, so its tokenizer's BatchNorm statistics are that
    subject's. Trained on several subjects with subject-homogeneous batches, one shared set of
    running statistics averages subjects whose spatial layers output different scales, and eval
    mode then normalises every subject wrongly (measured on synthetic-ieeg, 12-15 speech
    channels: held-out top-1 .14 with shared statistics, .30 with the same weights and
    per-subject statistics; docs/decisions.md).
    """

    def __init__(self, n_features: int, subjects: list[str]) -> None:
        super().__init__()
        self.stats = nn.ModuleDict({s: nn.BatchNorm1d(n_features, affine=False) for s in subjects})
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))

    def forward(self, h: torch.Tensor, subject: str) -> torch.Tensor:
        """[batch, n_features, time] -> the same, normalised with ``subject``'s statistics."""
        return self.stats[subject](h) * self.weight[:, None] + self.bias[:, None]


class PatchTokenizer(nn.Module):
    """[batch, d_neural, time] -> tokens [batch, n_patches, d_model] (conv blocks per patch:
    Conv1d then BatchNorm with per-subject statistics; no activation, as in Du-IN)."""

    def __init__(
        self,
        d_neural: int,
        patch_len: int,
        patch_steps: int,
        filters: list[int],
        subjects: list[str],
    ) -> None:
        super().__init__()
        kernel, stride, padding = first_conv_geometry(patch_len, patch_steps)
        widths = [d_neural, *filters]
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            k, s, p = (kernel, stride, padding) if i == 0 else (3, 1, 1)
            self.convs.append(nn.Conv1d(c_in, c_out, k, s, p))
            self.norms.append(SubjectBatchNorm(c_out, subjects))
        self.patch_len = patch_len
        self.d_model = math.ceil(patch_len / stride) * filters[-1]

    def forward(self, h: torch.Tensor, subject: str) -> torch.Tensor:
        batch, d, n_times = h.shape
        n_patches = n_times // self.patch_len
        h = h[..., : n_patches * self.patch_len].reshape(batch, d, n_patches, self.patch_len)
        h = h.permute(0, 2, 1, 3).reshape(batch * n_patches, d, self.patch_len)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(conv(h), subject)
        return h.reshape(batch, n_patches, -1)


def sincos_embedding(n_positions: int, d_model: int) -> torch.Tensor:
    """Fixed sin-cos position embedding [n_positions, d_model] (Vaswani et al.)."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


class TransformerLayer(nn.Module):
    """Post-norm transformer layer with LayerNorm on per-head queries and keys."""

    def __init__(self, config: DuINConfig, d_model: int) -> None:
        super().__init__()
        inner = config.n_heads * config.d_head
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.qkv = nn.Linear(d_model, 3 * inner)
        self.q_norm, self.k_norm = nn.LayerNorm(config.d_head), nn.LayerNorm(config.d_head)
        self.out = nn.Linear(inner, d_model)
        self.attn_dropout = config.attn_dropout
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, d_model)
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, n, 3, self.n_heads, self.d_head).unbind(2)
        q, k, v = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2), v.transpose(1, 2)
        dropout = self.attn_dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        x = self.norm1(x + self.drop(self.out(attn.transpose(1, 2).reshape(batch, n, -1))))
        return self.norm2(x + self.drop(self.ffn(x)))


class TransformerStack(nn.Module):
    """Sin-cos time embedding then ``n_layers`` transformer layers: [b, n, d] -> [b, n, d]."""

    def __init__(self, config: DuINConfig, d_model: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config, d_model) for _ in range(n_layers))
        self.d_model = d_model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + sincos_embedding(tokens.shape[1], self.d_model).to(tokens)
        for layer in self.layers:
            x = layer(x)
        return x


class DuINEncoder(nn.Module):
    """Spatial encoder (per-subject linear + patch tokenizer) and transformer encoder."""

    def __init__(self, config: DuINConfig, info: RecordingInfo) -> None:
        super().__init__()
        self.patch_len = max(1, round(config.patch_seconds * info.sfreq))
        if info.n_times < self.patch_len:
            raise UserInputError(
                f"Trials of {info.n_times} samples are shorter than one {self.patch_len}-sample "
                "patch; lower model.patch_seconds or prepare longer epochs"
            )
        self.n_patches = info.n_times // self.patch_len
        self.subject = SubjectLinear(info.channels, config.d_neural)
        self.tokenizer = PatchTokenizer(
            config.d_neural,
            self.patch_len,
            config.patch_steps,
            config.conv_filters,
            list(info.channels),
        )
        self.d_model = self.tokenizer.d_model
        self.transformer = TransformerStack(config, self.d_model, config.n_layers)

    def tokens(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        """Patch tokens before the transformer: [batch, n_patches, d_model]."""
        return self.tokenizer(self.subject(x, subject), subject)

    def forward(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        """Contextual tokens [batch, n_patches, d_model]."""
        return self.transformer(self.tokens(x, subject))


# ------------------------------------------------------------------------------ vector quantizer
class CosineVectorQuantizer(nn.Module):
    """Codebook of l2-normalised codes; queries are l2-normalised and take the code of highest
    cosine similarity. Codes are not trained by gradient: an exponential moving average of the
    vectors assigned to each code (Laplace-smoothed counts, re-normalised) replaces them, and a
    spherical k-means over the first training batch initialises them (LaBraM's NormEMA scheme).
    Optionally (``dead_code_threshold`` > 0, not in Du-IN) codes whose EMA count decays below the
    threshold restart at a random vector of the batch, against codebook collapse.
    The straight-through estimator passes gradients to the queries; the loss is the commitment
    term ``beta * ||z - sg(code)||^2``.
    """

    def __init__(self, config: DuINConfig, d_model: int) -> None:
        super().__init__()
        self.project = nn.Sequential(
            nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, config.d_codex)
        )
        size, width = config.codebook_size, config.d_codex
        self.decay, self.beta = config.ema_decay, config.beta
        self.kmeans_iters, self.dead_threshold = config.kmeans_iters, config.dead_code_threshold
        self.register_buffer("codebook", F.normalize(torch.randn(size, width), dim=-1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", torch.zeros(size, width))
        self.register_buffer("initialised", torch.tensor(False))

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the most cosine-similar code for each row of ``z`` [n, d_codex]."""
        return (F.normalize(z, dim=-1) @ self.codebook.T).argmax(dim=-1)

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor) -> None:
        """Spherical k-means on normalised rows of ``z`` [n, d_codex]; sets codes and EMA state."""
        size = self.codebook.shape[0]
        generator = torch.Generator(device=z.device).manual_seed(0)
        if z.shape[0] >= size:
            pick = torch.randperm(z.shape[0], generator=generator, device=z.device)[:size]
        else:  # fewer vectors than codes: sample with replacement, as LaBraM does
            pick = torch.randint(0, z.shape[0], (size,), generator=generator, device=z.device)
        centroids = z[pick].clone()
        counts = torch.zeros(size, device=z.device)
        for _ in range(max(1, self.kmeans_iters)):
            assign = (z @ centroids.T).argmax(dim=-1)
            counts = torch.bincount(assign, minlength=size).to(z.dtype)
            sums = torch.zeros_like(centroids).index_add_(0, assign, z)
            centroids = torch.where(counts[:, None] > 0, F.normalize(sums, dim=-1), centroids)
        _broadcast(centroids)
        _broadcast(counts)
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts[:, None])
        self.initialised.fill_(True)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        """Move each used code toward the mean of its assigned rows of ``z`` (normalised)."""
        size = self.codebook.shape[0]
        counts = torch.bincount(codes, minlength=size).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z.to(self.embed_sum.dtype))
        _all_reduce(counts)
        _all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total, eps = self.cluster_size.sum(), 1e-5
        smoothed = (self.cluster_size + eps) / (total + size * eps) * total
        updated = F.normalize(self.embed_sum / smoothed[:, None], dim=-1)
        self.codebook.copy_(torch.where(counts[:, None] > 0, updated, self.codebook))
        dead = self.cluster_size < self.dead_threshold
        if bool(dead.any()):  # restart unused codes at random vectors of this batch
            fresh = z[torch.randint(0, z.shape[0], (int(dead.sum()),), device=z.device)]
            _broadcast(fresh)  # `dead` is the same on every rank: its statistics are reduced
            self.codebook[dead] = fresh.to(self.codebook.dtype)
            self.embed_sum[dead] = fresh.to(self.codebook.dtype)
            self.cluster_size[dead] = 1.0

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens [b, n, d_model] -> (quantised [b, n, d_codex], commitment loss, codes [b, n])."""
        z = F.normalize(self.project(tokens), dim=-1)
        flat = z.reshape(-1, z.shape[-1])
        if self.training and not bool(self.initialised):
            self.kmeans_init(flat.detach().float())
        codes = self.lookup(flat.detach())
        quantised = self.codebook[codes].to(z.dtype)
        if self.training:
            self.ema_update(flat.detach().float(), codes)
        loss = self.beta * F.mse_loss(flat, quantised.detach())
        straight = flat + (quantised - flat).detach()
        return straight.reshape(z.shape), loss, codes.reshape(z.shape[:-1])


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(tensor: torch.Tensor) -> None:
    """Sum over data-parallel processes (codebook statistics stay identical on every rank)."""
    if _distributed():
        torch.distributed.all_reduce(tensor)


def _broadcast(tensor: torch.Tensor) -> None:
    if _distributed():
        torch.distributed.broadcast(tensor, src=0)


# ---------------------------------------------------------------------------------- the stages
class DuINVQVAE(EphysModel):
    """Stage 1: the neural tokenizer (encoder + codebook) trained by reconstruction."""

    kind = "ephys-pretrain"

    def __init__(self, config: DuINConfig, info: RecordingInfo) -> None:
        super().__init__()
        self.config, self.info = config, info
        self.encoder = DuINEncoder(config, info)
        d_model, patch_len = self.encoder.d_model, self.encoder.patch_len
        self.quantizer = CosineVectorQuantizer(config, d_model)
        self.post_quant = nn.Linear(config.d_codex, d_model)
        self.decoder = TransformerStack(config, d_model, config.n_decoder_layers)
        self.head = nn.Linear(d_model, patch_len * config.d_neural)
        self.desubject = nn.ModuleDict(
            {s: nn.Linear(config.d_neural, n) for s, n in info.channels.items()}
        )

    def codes(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        """Codebook index of every patch: [batch, n_patches] int64."""
        return self.quantizer(self.encoder(x, subject))[2]

    def reconstruct(
        self, x: torch.Tensor, subject: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction [b, ch, n_patches * patch_len], commitment loss, codes [b, n])."""
        quantised, vq_loss, codes = self.quantizer(self.encoder(x, subject))
        decoded = self.head(self.decoder(self.post_quant(quantised)))  # [b, n, patch * d_neural]
        batch, n_patches, _ = decoded.shape
        h = decoded.reshape(batch, n_patches, self.config.d_neural, -1).permute(0, 1, 3, 2)
        h = h.reshape(batch, -1, self.config.d_neural)  # [b, time, d_neural]
        return self.desubject[subject](h).transpose(1, 2), vq_loss, codes

    def forward(
        self, x: torch.Tensor, subject: str, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        recon, vq_loss, codes = self.reconstruct(x, subject)
        mse = F.mse_loss(recon, x[..., : recon.shape[-1]])
        used = torch.unique(codes).numel() / self.config.codebook_size
        return {
            "loss": mse + vq_loss,
            "mse": mse.detach(),
            "vq": vq_loss.detach(),
            "code_usage": torch.tensor(used, device=x.device),
        }


def symmetric_masks(
    batch: int, n_patches: int, ratio: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Random patch mask [batch, n_patches] (True = hidden) with ``n - int(n * (1 - ratio))``
    patches hidden per row; its complement ``~mask`` is the second, symmetric view."""
    keep = int(n_patches * (1 - ratio))
    ranks = torch.rand(batch, n_patches, device=device).argsort(dim=-1).argsort(dim=-1)
    return ranks >= keep


def masked_code_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of code predictions at hidden patches only.

    ``logits_a`` come from the view that hides ``mask``, ``logits_b`` from the view that hides
    ``~mask`` ([batch, n, codebook]); each patch is scored from the view in which it is hidden.
    """
    logits = torch.where(mask[..., None], logits_a, logits_b)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


class DuINMAE(EphysModel):
    """Stage 2: a fresh encoder predicts the frozen tokenizer's codes of masked patches.

    The frozen stage-1 model (``teacher``) is part of the module, so a mae run's weights are
    self-contained; it always stays in eval mode and has no trainable parameters.
    """

    kind = "ephys-pretrain"

    def __init__(
        self,
        config: DuINConfig,
        info: RecordingInfo,
        teacher_config: DuINConfig,
        teacher_info: RecordingInfo | None = None,
    ) -> None:
        super().__init__()
        self.config, self.info = config, info
        teacher_info = teacher_info or info
        missing = [s for s in info.channels if s not in teacher_info.channels]
        if missing:
            raise UserInputError(
                f"Subject {missing[0]} is not among the tokenizer's subjects "
                f"{', '.join(teacher_info.channels)}; pre-train du-in-vqvae on it first"
            )
        mismatch = info.channel_mismatch(teacher_info)
        if mismatch:
            raise UserInputError(
                f"The tokenizer was trained on other channels: {mismatch}; pre-train du-in-vqvae "
                "on a store with the same channel selection (pipeline.channels.*)"
            )
        self.encoder = DuINEncoder(config, info)
        self.mask_token = nn.Parameter(torch.zeros(self.encoder.d_model))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(self.encoder.d_model, teacher_config.codebook_size)
        self.teacher = DuINVQVAE(teacher_config, teacher_info)
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> DuINMAE:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(
        self, x: torch.Tensor, subject: str, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            codes = self.teacher.codes(x, subject)
        tokens = self.encoder.tokens(x, subject)
        mask = symmetric_masks(tokens.shape[0], tokens.shape[1], self.config.mask_ratio, x.device)
        hidden = self.mask_token.to(tokens.dtype)
        view_a = torch.where(mask[..., None], hidden, tokens)
        view_b = torch.where(mask[..., None], tokens, hidden)
        logits_a = self.head(self.encoder.transformer(view_a))
        logits_b = self.head(self.encoder.transformer(view_b))
        loss = masked_code_loss(logits_a, logits_b, mask, codes)
        predicted = torch.where(mask[..., None], logits_a, logits_b).argmax(-1)
        return {"loss": loss, "code_accuracy": (predicted == codes).float().mean().detach()}


class DuINClassifier(EphysModel):
    """Stage 3: encoder -> flatten -> ``cls_hidden`` (ReLU) -> class logits.

    The head's linear layers start as Du-IN's (weights N(0, 0.02), biases 0). With
    PyTorch's default init (uniform biases) every hidden ReLU of a classifier started from a
    pre-trained encoder died in the first epoch on synthetic-ieeg (seed 1: chance top-1); with
    Du-IN's init the same run reached .42.
    """

    kind = "ephys-classifier"

    def __init__(self, config: DuINConfig, info: RecordingInfo) -> None:
        super().__init__()
        self.config, self.info = config, info
        self.encoder = DuINEncoder(config, info)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.encoder.n_patches * self.encoder.d_model, config.cls_hidden),
            nn.ReLU(),
            nn.Dropout(config.cls_dropout),
            nn.Linear(config.cls_hidden, info.n_classes),
        )
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def logits(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        """Class scores [batch, n_classes]."""
        return self.head(self.encoder(x, subject))

    def forward(
        self, x: torch.Tensor, subject: str, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return classification_outputs(self.logits(x, subject), y)


def classification_outputs(logits: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Loss (cross-entropy), accuracy and logits of a classifier's batch."""
    out = {"logits": logits}
    if y is not None:
        out["loss"] = F.cross_entropy(logits, y)
        out["accuracy"] = (logits.argmax(-1) == y).float().mean().detach()
    return out
