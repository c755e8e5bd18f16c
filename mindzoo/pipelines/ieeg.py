"""The iEEG (sEEG/ECoG) pipeline: the shared ephys core with Du-IN's published defaults.

Du-IN (Zheng et al., NeurIPS 2024, section 4.2): band-pass 0.5-200 Hz, 50 Hz notch, resampled to
1000 Hz, bipolar re-reference along each shaft, per-channel z-score, 3 s windows after the cue,
a label-stratified 80/10/10 split per subject. Those are the defaults here; every step is in
:mod:`mindzoo.pipelines.ephys`.
"""

from __future__ import annotations

from typing import ClassVar

from mindzoo.pipelines.ephys import EphysPipelineConfig


class IEEGPipelineConfig(EphysPipelineConfig):
    """``pipeline.*`` of an iEEG dataset: the shared defaults, which are the Du-IN preset
    (line_freq 50, l_freq 0.5, h_freq 200, reference bipolar, sfreq 1000, tmin 0, tmax 3)."""

    datatype: ClassVar[str] = "ieeg"
    data_types: ClassVar[tuple[str, ...]] = ("seeg", "ecog", "dbs")
