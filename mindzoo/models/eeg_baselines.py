"""EEG/sEEG classification baselines from the braindecode library, one network per subject.

``eegnet`` (EEGNetv4, Lawhern et al. 2018), ``shallow-fbcsp`` (ShallowFBCSPNet, Schirrmeister
et al. 2017) and ``eeg-conformer`` (EEGConformer, Song et al. 2023) from braindecode 0.8.1 are
wrapped in :class:`PerSubjectBaseline`: one independent network per subject (subjects differ
in channel count), trained by the same ephys loop as Du-IN on the same store, so the tables
compare like with like. The runs train all subjects' networks together (subject-homogeneous
batches, no shared parameters); the learning-rate schedule and early stopping are shared.

braindecode's temporal kernel and pooling sizes are in samples for the sampling rate each
network was designed at (EEGNet 128 Hz, ShallowFBCSPNet and EEGConformer 250 Hz); with
``scale_to_sfreq`` they are rescaled to the store's rate so they span the same durations.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mindzoo.datasets.ephys_views import RecordingInfo
from mindzoo.extras import require
from mindzoo.models.du_in import classification_outputs
from mindzoo.models.trainable import EphysModel


class BaselineConfig(BaseModel):
    """Settings shared by the braindecode baselines."""

    model_config = ConfigDict(extra="forbid")

    drop_prob: float = Field(0.5, ge=0, lt=1, description="Dropout probability.")
    scale_to_sfreq: bool = Field(
        True, description="Rescale kernel/pool sizes from the design rate to the store's rate."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the braindecode class."
    )


def _scaled(samples: int, design_sfreq: float, sfreq: float, scale: bool) -> int:
    return max(1, round(samples * sfreq / design_sfreq)) if scale else samples


def _eegnet(config: BaselineConfig, n_chans: int, info: RecordingInfo) -> nn.Module:
    EEGNetv4 = require("braindecode.models", "eeg").EEGNetv4  # on use: loads slowly

    kernel = _scaled(64, 128.0, info.sfreq, config.scale_to_sfreq)
    return EEGNetv4(
        n_chans=n_chans,
        n_outputs=info.n_classes,
        n_times=info.n_times,
        kernel_length=kernel,
        drop_prob=config.drop_prob,
        **config.options,
    )


def _fbcsp_lengths(config: BaselineConfig, info: RecordingInfo) -> list[int]:
    """Filter length, pool length and pool stride of ShallowFBCSPNet/EEGConformer (designed for
    250 Hz: 25, 75, 15 samples), rescaled to the store's rate."""
    return [_scaled(n, 250.0, info.sfreq, config.scale_to_sfreq) for n in (25, 75, 15)]


def _fbcsp_style(
    cls: type[nn.Module],
    final_length: str,
    config: BaselineConfig,
    n_chans: int,
    info: RecordingInfo,
) -> nn.Module:
    """ShallowFBCSPNet or EEGConformer (same temporal filter and pooling arguments) with the
    lengths rescaled to the store's rate; ``final_length`` names the class's "auto" argument."""
    scale = _fbcsp_lengths(config, info)
    return cls(
        n_chans=n_chans,
        n_outputs=info.n_classes,
        n_times=info.n_times,
        filter_time_length=scale[0],
        pool_time_length=scale[1],
        pool_time_stride=scale[2],
        drop_prob=config.drop_prob,
        add_log_softmax=False,
        **{final_length: "auto"},
        **config.options,
    )


def _shallow(config: BaselineConfig, n_chans: int, info: RecordingInfo) -> nn.Module:
    ShallowFBCSPNet = require("braindecode.models", "eeg").ShallowFBCSPNet

    return _fbcsp_style(ShallowFBCSPNet, "final_conv_length", config, n_chans, info)


def _conformer(config: BaselineConfig, n_chans: int, info: RecordingInfo) -> nn.Module:
    EEGConformer = require("braindecode.models", "eeg").EEGConformer

    return _fbcsp_style(EEGConformer, "final_fc_length", config, n_chans, info)


BASELINES = {
    "eegnet": _eegnet,
    "shallow-fbcsp": _shallow,
    "eeg-conformer": _conformer,
}


class PerSubjectBaseline(EphysModel):
    """One braindecode network per subject: ``forward(x [b, ch, time], subject, y)``."""

    kind = "ephys-classifier"

    def __init__(self, config: BaselineConfig, info: RecordingInfo, family: str) -> None:
        super().__init__()
        make = BASELINES[family]
        self.info = info
        with warnings.catch_warnings():  # braindecode's import and argument-name chatter
            warnings.simplefilter("ignore")
            self.nets = nn.ModuleDict({s: make(config, n, info) for s, n in info.channels.items()})

    def logits(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        """Class scores [batch, n_classes]."""
        return self.nets[subject](x)

    def forward(
        self, x: torch.Tensor, subject: str, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return classification_outputs(self.logits(x, subject), y)
