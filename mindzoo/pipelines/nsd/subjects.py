"""Subjects, sessions and their trials: everything about one subject checked before any betas.

Trials: NSD trial ``t`` (1-based over the whole experiment) of subject ``s`` is in session
``(t - 1) // T + 1`` and shows image ``subjectim[s - 1, masterordering[t - 1] - 1] - 1``
(0-based). Stimulus ids are ``nsd-NNNNN`` with that 0-based number (the CSV's ``nsdId``, the
row of ``imgBrick``; ``responses.tsv``'s ``73KID`` is that number + 1). Test = the shared 1,000
(MindEye2's split), train = the rest. ``repetition`` is NSD's own (0, 1, 2 in chronological
order over all 40 sessions), so it does not change when fewer sessions are imported; the trial
table also keeps ``nsd_trial``.

Run numbers come from ``responses.tsv`` when the mirror has it (else ``run`` is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd

from mindzoo.errors import UserInputError
from mindzoo.pipelines.nsd.config import NSDConfig
from mindzoo.pipelines.nsd.mirror import (
    EXPDESIGN,
    MAX_REPEATS,
    STIM_INFO,
    Design,
    Mirror,
    betas_dir,
    betas_names,
    sessions_on_disk,
)
from mindzoo.pipelines.nsd.regions import Region, surface_region, volume_region


def select_subjects(mirror: Mirror, design: Design, config: NSDConfig) -> list[int]:
    known = range(1, design.n_subjects + 1)
    if config.subjects is not None:
        for subject in config.subjects:
            if subject not in known:
                raise UserInputError(
                    f"Unknown NSD subject {subject}: {EXPDESIGN} has subjects 1-"
                    f"{design.n_subjects}; fix subjects"
                )
        return list(config.subjects)
    present = [s for s in known if (mirror.root / betas_dir(s, config)).is_dir()]
    if not present:
        raise UserInputError(
            f"NSD mirror {mirror.root} has no {config.betas_version} betas in space "
            f"{config.space} (expected e.g. {betas_dir(1, config)}/); fix --source or space"
        )
    return present


@dataclass
class SubjectPlan:
    subject: int
    files: list[list[Path]]  # per session: one file, or lh and rh
    trials: pd.DataFrame
    region: Region


def plan_subject(
    mirror: Mirror, design: Design, info: pd.DataFrame, subject: int, config: NSDConfig
) -> SubjectPlan:
    """Everything about one subject that can be checked without reading betas."""
    on_disk = sessions_on_disk(mirror, subject, config)
    folder = betas_dir(subject, config)
    reference = mirror.root / folder / betas_names(on_disk[0], config)[0]
    n_trials = _trials_in_file(reference)
    n_sessions = len(design.masterordering) // n_trials
    sessions = config.sessions or on_disk
    for session in sessions:
        if session > n_sessions:
            raise UserInputError(
                f"Session {session} of subject {subject} is out of range: {EXPDESIGN} has "
                f"{len(design.masterordering)} trials = {n_sessions} sessions of {n_trials}; "
                "fix sessions"
            )
    files = [
        [mirror.require(f"{folder}/{name}") for name in betas_names(session, config)]
        for session in sessions
    ]
    for path in (path for session_files in files for path in session_files):
        if (count := _trials_in_file(path)) != n_trials:
            raise UserInputError(
                f"{path.relative_to(mirror.root)} has {count} trials but {reference.name} has "
                f"{n_trials}; every NSD session has the same number"
            )
    trials = _design_trials(design, subject, sessions, n_trials)
    _check_stim_info(info, subject, trials)
    trials["run"] = _runs(mirror, subject, trials, n_trials)
    region = (
        surface_region(mirror, config)
        if config.space == "fsaverage"
        else volume_region(mirror, subject, config)
    )
    return SubjectPlan(subject, files, trials, region)


def _trials_in_file(path: Path) -> int:
    """Number of trials in a beta file, from its header only."""
    try:
        if path.suffix == ".hdf5":
            with h5py.File(path, "r") as file:
                if "betas" not in file:
                    raise UserInputError(f"{path} has no dataset 'betas'; it is not NSD betas")
                return int(file["betas"].shape[0])
        return int(nib.load(path).shape[-1])
    except (OSError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise UserInputError(
            f"Cannot read {path} ({err}); download it again from the NSD release"
        ) from err


def _design_trials(
    design: Design, subject: int, sessions: list[int], trials_per_session: int
) -> pd.DataFrame:
    """The subject's trials in the chosen sessions, chronological, with NSD's repetition index."""
    image = design.subjectim[subject - 1, design.masterordering]
    repetition = pd.Series(image).groupby(image).cumcount().to_numpy()
    nsd_trial = np.arange(1, len(image) + 1)
    session = (nsd_trial - 1) // trials_per_session + 1
    keep = np.isin(session, sessions)
    return pd.DataFrame(
        {
            "nsd_trial": nsd_trial[keep],
            "session": session[keep],
            "nsd_id": image[keep],
            "repetition": repetition[keep],
            "split": np.where(np.isin(image[keep], design.shared_ids), "test", "train"),
        }
    )


def _check_stim_info(info: pd.DataFrame, subject: int, trials: pd.DataFrame) -> None:
    """The CSV's ``subjectN_repM`` must name the same trial as the design for every trial."""
    columns = [f"subject{subject}_rep{rep}" for rep in range(MAX_REPEATS)]
    missing = [column for column in columns if column not in info.columns]
    if missing:
        raise UserInputError(
            f"{STIM_INFO} has no column {missing[0]!r}; use the file of the NSD release"
        )
    if trials["repetition"].max() >= MAX_REPEATS:
        raise UserInputError(
            f"{EXPDESIGN} shows an image more than {MAX_REPEATS} times to subject {subject}; "
            "use the nsd_expdesign.mat of the NSD release"
        )
    listed = info.reindex(trials["nsd_id"].to_numpy())[columns].to_numpy()
    expected = listed[np.arange(len(trials)), trials["repetition"].to_numpy()]
    wrong = expected != trials["nsd_trial"].to_numpy()
    if wrong.any():
        row = trials[wrong].iloc[0]
        listed_trial = expected[wrong][0]
        says = "has no such row" if pd.isna(listed_trial) else f"says trial {int(listed_trial)}"
        raise UserInputError(
            f"{EXPDESIGN} has subject {subject} see nsdId {row['nsd_id']} (repetition "
            f"{row['repetition']}) at trial {row['nsd_trial']} but {STIM_INFO} {says}; "
            "use both files from one NSD release"
        )


def _runs(mirror: Mirror, subject: int, trials: pd.DataFrame, per_session: int) -> np.ndarray:
    """Run numbers from ``responses.tsv`` (its rows are the trials in order); 0 without it."""
    relative = f"nsddata/ppdata/subj{subject:02d}/behav/responses.tsv"
    if not (mirror.root / relative).is_file():
        return np.zeros(len(trials), dtype=np.int64)
    path = mirror.require(relative)
    try:
        responses = pd.read_csv(path, sep="\t", usecols=["SESSION", "RUN", "73KID"])
    except ValueError as err:
        raise UserInputError(f"{relative}: {err}; use the file of the NSD release") from err
    responses["index"] = responses.groupby("SESSION").cumcount()
    wanted = pd.DataFrame(
        {"SESSION": trials["session"], "index": (trials["nsd_trial"] - 1) % per_session}
    )
    found = wanted.merge(responses, on=["SESSION", "index"], how="left")
    shown = found["73KID"].to_numpy() - 1
    wrong = shown != trials["nsd_id"].to_numpy()  # NaN (no such row) is wrong too
    if wrong.any():
        row = trials[wrong].iloc[0]
        raise UserInputError(
            f"{relative} does not list nsdId {row['nsd_id']} + 1 as trial {row['nsd_trial']} "
            f"(session {row['session']}) like {EXPDESIGN}; use both files from one NSD release"
        )
    return found["RUN"].to_numpy(dtype=np.int64)
