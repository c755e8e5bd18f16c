"""NSD (Natural Scenes Dataset) from a local mirror in NSD's own release layout.

Imports the released single-trial betas (GLMsingle, ``betas_fithrf_GLMdenoise_RR`` by default)
of the chosen subjects and sessions, keeps the voxels (or fsaverage vertices) of an NSD ROI
(``nsdgeneral`` by default), z-scores each session per voxel with the statistics of its
training trials, and returns them with NSD's own trial bookkeeping. Modules:

- ``config``: the import's settings (:class:`NSDConfig`);
- ``mirror``: the mirror's release layout, the experiment design and the stimulus table;
- ``subjects``: the chosen subjects and sessions, their beta files and trials, checked;
- ``regions``: the ROI voxels (volume) or vertices (fsaverage) with positions and names;
- ``betas``: reading the released betas of the ROI, in percent signal change;
- ``pipeline``: the whole import (:func:`prepare_nsd_mirror`), conventions and images.

The names below are re-exported so that ``from mindzoo.pipelines.nsd import X`` works.
"""

from mindzoo.pipelines.nsd.betas import INT16_BETA_SCALE
from mindzoo.pipelines.nsd.config import NSDConfig
from mindzoo.pipelines.nsd.mirror import (
    EXPDESIGN,
    FSAVERAGE,
    HEMISPHERES,
    MAX_REPEATS,
    STIM_INFO,
    STIMULI,
    VOLUME_SPACES,
)
from mindzoo.pipelines.nsd.pipeline import prepare_nsd_mirror, stimulus_id

__all__ = [
    "EXPDESIGN",
    "FSAVERAGE",
    "HEMISPHERES",
    "INT16_BETA_SCALE",
    "MAX_REPEATS",
    "STIMULI",
    "STIM_INFO",
    "VOLUME_SPACES",
    "NSDConfig",
    "prepare_nsd_mirror",
    "stimulus_id",
]
