"""fMRI pipelines: BIDS bold runs + events -> z-scored single-trial betas per subject.

The steps are described in :mod:`mindzoo.pipelines.fmri.pipeline`, which runs them. Modules:

- ``config``: the pipeline's settings (:class:`FMRIPipelineConfig`) and the split names;
- ``bids``: BIDS entities, raw and fMRIPrep bold runs, inherited sidecars, header checks;
- ``runs``: which runs a config selects, each checked and numbered with its trials;
- ``events``: a run's events table and the rows modelled as trials;
- ``confounds``: a run's confound regressors (fMRIPrep's confounds TSV);
- ``stimuli``: the stimulus catalogue (ids, labels, splits) and the stimulus images;
- ``masks``: voxel grids, mask files and a subject's signal-ROI voxels;
- ``glm``: HRF trial regressors, the nuisance basis and the LSA/LSS single-trial fits;
- ``betas``: the prepared result (:class:`PreparedFMRI`) and per-session z-scoring;
- ``sources``: the input files read, for provenance;
- ``pipeline``: the whole run (:func:`prepare_bids_fmri`) and the files it reads
  (:func:`input_files`).

The NSD import (:mod:`mindzoo.pipelines.nsd`) returns the same result types. The names below are
re-exported so that ``from mindzoo.pipelines.fmri import X`` works.
"""

from mindzoo.pipelines.fmri.betas import PreparedFMRI, SubjectBetas, zscore_by_session
from mindzoo.pipelines.fmri.config import SPLITS, FMRIPipelineConfig
from mindzoo.pipelines.fmri.glm import fit_single_trial_betas, nuisance_regressors, trial_regressors
from mindzoo.pipelines.fmri.pipeline import input_files, prepare_bids_fmri
from mindzoo.pipelines.fmri.stimuli import IMAGE_EXTENSIONS, STIMULI_DIR, STIMULI_TABLE

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "STIMULI_DIR",
    "STIMULI_TABLE",
    "FMRIPipelineConfig",
    "PreparedFMRI",
    "SubjectBetas",
    "fit_single_trial_betas",
    "input_files",
    "nuisance_regressors",
    "prepare_bids_fmri",
    "trial_regressors",
    "zscore_by_session",
]
