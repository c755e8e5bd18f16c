"""Confound regressors of a run: chosen columns of the confounds TSV beside its bold.

The TSV is fMRIPrep's ``*_desc-confounds_timeseries.tsv`` (or an older fMRIPrep name, see
:meth:`mindzoo.pipelines.fmri.bids.BoldRun.confounds_path`); the chosen columns are centred and
fMRIPrep's missing first rows set to 0.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri.bids import BoldRun, require_content
from mindzoo.pipelines.fmri.sources import SourceFiles


def read_confounds(
    run: BoldRun, columns: list[str], n_frames: int, sources: SourceFiles
) -> np.ndarray | None:
    """Chosen confound columns, centred, with missing values (fMRIPrep's first rows) as 0."""
    if not columns:
        return None
    path = run.confounds_path()
    if not os.path.lexists(path):
        raise UserInputError(
            f"confounds were requested but {path.name} is missing beside {run.name}; "
            "add it or set confounds=[]"
        )
    require_content(path)
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    sources.add(path)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UserInputError(
            f"{path.name} lacks confound column(s) {', '.join(missing)}; choose from "
            f"{', '.join(table.columns[:20])}{' ...' if len(table.columns) > 20 else ''}"
        )
    if len(table) != n_frames:
        raise UserInputError(
            f"{path.name} has {len(table)} rows but {run.name} has {n_frames} volumes; "
            "use the confounds of this run"
        )
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    all_missing = np.isnan(values).all(axis=0)
    if all_missing.any():
        raise UserInputError(
            f"{path.name}: confound column {columns[int(all_missing.argmax())]} has no numeric "
            "value; choose another column"
        )
    values = values - np.nanmean(values, axis=0)
    return np.nan_to_num(values, nan=0.0)
