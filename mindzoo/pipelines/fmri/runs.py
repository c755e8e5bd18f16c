"""Run planning: the bold runs a config selects, each checked and numbered, with its trials.

Tasks, subjects and sessions are chosen from every run of the dataset; each chosen run's header,
TR, trial onsets and confounds are checked before any bold data is read (:func:`plan_subject`).
Sessions are numbered by label, runs by their ``run`` entity within a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from mindzoo.errors import UserInputError
from mindzoo.pipelines.fmri.bids import (
    BoldRun,
    check_bold_header,
    find_bold_runs,
    find_fmriprep_runs,
    list_names,
    require_content,
)
from mindzoo.pipelines.fmri.config import FMRIPipelineConfig, under_root
from mindzoo.pipelines.fmri.confounds import read_confounds
from mindzoo.pipelines.fmri.events import read_events, run_trials
from mindzoo.pipelines.fmri.sources import SourceFiles


def select_tasks(runs: list[BoldRun], tasks: list[str] | None) -> list[str]:
    """The tasks to prepare: ``tasks`` if all present, else the only task in the dataset."""
    available = sorted({run.task for run in runs if run.task is not None})
    if tasks is None:
        if len(available) == 1:
            return available
        if not available:
            raise UserInputError(
                f"No task entity in the bold file names (e.g. {runs[0].name}); "
                "name runs like sub-01_task-NAME_bold.nii.gz"
            )
        raise UserInputError(
            f"The dataset has several tasks ({', '.join(available)}); choose one with task=NAME "
            "(or several with task=[A,B])"
        )
    unknown = [task for task in tasks if task not in available]
    if unknown:
        raise UserInputError(
            f"Unknown task {unknown[0]!r}; the dataset has: "
            f"{', '.join(available) or 'no task entity'}"
        )
    return list(dict.fromkeys(tasks))


def select_subjects(runs: list[BoldRun], subjects: list[str] | None) -> list[str]:
    """Subject labels (without ``sub-``) to prepare: ``subjects`` or every one with runs."""
    available = sorted({run.subject for run in runs})
    if subjects is None:
        return available
    unknown = [label for label in subjects if label not in available]
    if unknown:
        raise UserInputError(
            f"Unknown subject(s) {', '.join('sub-' + s for s in unknown)}; "
            f"available: {', '.join('sub-' + s for s in available)}"
        )
    return list(dict.fromkeys(subjects))


def select_sessions(runs: list[BoldRun], sessions: list[str] | None) -> list[BoldRun]:
    """The runs whose session label matches one of ``sessions`` (labels or glob patterns).

    ``None`` keeps every run. A pattern that matches no session, or a dataset without
    sessions, is an error that lists the sessions there are.
    """
    if sessions is None:
        return runs
    available = sorted({run.session for run in runs if run.session is not None})
    if not available:
        raise UserInputError(
            f"sessions={sessions} but the runs have no ses- entity (e.g. {runs[0].name}); "
            "drop the sessions limit"
        )
    unmatched = [p for p in sessions if not any(fnmatchcase(s, p) for s in available)]
    if unmatched:
        raise UserInputError(
            f"No session matches {unmatched[0]!r}; the chosen runs have sessions: "
            f"{list_names(['ses-' + s for s in available])}"
        )
    return [
        run
        for run in runs
        if run.session is not None and any(fnmatchcase(run.session, p) for p in sessions)
    ]


@dataclass
class RunSelection:
    """The runs to prepare and the context they were chosen from.

    ``task_runs``: every run of the chosen tasks (all subjects and sessions: split inference
    and session numbering look at them, so a limit does not change either); ``runs``: those of
    the chosen subjects and sessions; ``subjects``: labels without ``sub-``.
    """

    task_runs: list[BoldRun]
    runs: list[BoldRun]
    subjects: list[str]


def select_runs(root: Path, config: FMRIPipelineConfig) -> RunSelection:
    if config.input == "fmriprep":
        if not root.is_dir():
            raise UserInputError(f"BIDS root {root} is not a directory; pass the dataset folder")
        runs = find_fmriprep_runs(under_root(root, config.derivatives_dir), root, config.space)
    else:
        runs = find_bold_runs(root)
    tasks = select_tasks(runs, config.tasks)
    task_runs = [run for run in runs if run.task in tasks]
    subjects = select_subjects(task_runs, config.subjects)
    chosen = select_sessions([run for run in task_runs if run.subject in subjects], config.sessions)
    without = [s for s in subjects if not any(run.subject == s for run in chosen)]
    if without:
        raise UserInputError(
            f"sub-{without[0]} has no runs in sessions {', '.join(config.sessions or [])}; "
            "choose other subjects or sessions"
        )
    return RunSelection(task_runs=task_runs, runs=chosen, subjects=subjects)


@dataclass
class RunPlan:
    """A bold run checked and ready to fit: header image, TR (s), trials and confounds."""

    run: BoldRun
    image: nib.Nifti1Image
    tr: float
    session: int
    run_number: int
    trials: pd.DataFrame  # stimulus_key, onset, duration, label, split (raw text), events_file
    confounds: np.ndarray | None  # [frame, column], centred


def plan_subject(
    subject: str, selection: RunSelection, config: FMRIPipelineConfig, sources: SourceFiles
) -> list[RunPlan]:
    """Check every chosen run of one subject and select its trials; runs without trials go."""
    runs = [run for run in selection.runs if run.subject == subject]
    sessions = _session_numbers([r.session for r in selection.task_runs if r.subject == subject])
    plans = []
    for run in runs:
        trials = run_trials(run, config, sources)
        if trials.empty:
            continue
        image = load_bold(run.bold_path)
        tr = check_bold_header(run, image)
        sources.add(run.bold_path, *run.sidecar_paths)
        n_frames = image.shape[3]
        _check_onsets_inside_run(run, trials, n_frames=n_frames, tr=tr)
        confounds = read_confounds(run, config.confounds, n_frames, sources)
        plans.append(RunPlan(run, image, tr, sessions[run.session], 0, trials, confounds))
    if not plans:
        raise UserInputError(
            f"sub-{subject} has no trials: no events row names a stimulus in column "
            f"{config.stimulus_column!r}{_trial_type_filter(runs, config)}; set "
            "stimulus_column/trial_types to match the events files"
        )
    _number_runs(plans)
    return plans


def runs_without_trials(
    subject: str, selection: RunSelection, plans: list[RunPlan]
) -> tuple[str, ...]:
    """The chosen runs of ``subject`` that :func:`plan_subject` left out of its ``plans``: no
    events row of theirs names a stimulus (an empty events table, or only responses)."""
    planned = {plan.run.name for plan in plans}
    return tuple(
        run.name for run in selection.runs if run.subject == subject and run.name not in planned
    )


def load_bold(path: Path) -> nib.Nifti1Image:
    """The NIfTI header of ``path`` (data read later); an empty, damaged or non-NIfTI file is
    one line naming it."""
    require_content(path)
    if path.stat().st_size == 0:
        raise UserInputError(f"{path} is empty (0 bytes): copy or download the bold file again")
    try:
        return nib.load(path)
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError) as exc:
        raise UserInputError(
            f"{path} is not a readable NIfTI image ({exc}); copy or download it again"
        ) from None


def _trial_type_filter(runs: list[BoldRun], config: FMRIPipelineConfig) -> str:
    """Error-message phrase naming the requested and the available trial types."""
    if config.trial_types is None:
        return ""
    column = config.trial_type_column
    present = set()
    for run in runs:
        events = read_events(run, [column])
        present |= set(events[column].dropna())
    return f" with {column} in {config.trial_types} (the events have {sorted(present)})"


def _session_numbers(labels: list[str | None]) -> dict[str | None, int]:
    """Session label -> int: the label itself when all are numeric, else 1-based sorted rank.

    A dataset without sessions is one session, numbered 1.
    """
    unique = sorted({label for label in labels if label is not None})
    if not unique:
        return {None: 1}
    if all(label.isdigit() for label in unique):
        return {label: int(label) for label in unique}
    return {label: rank for rank, label in enumerate(unique, start=1)}


def _number_runs(plans: list[RunPlan]) -> None:
    """Run numbers per session: the ``run`` entity when unique integers, else file order.

    A session with one run and no run entity (BIDS allows it) gets run 1.
    """
    for session in {plan.session for plan in plans}:
        in_session = [plan for plan in plans if plan.session == session]
        labels = [plan.run.entities.get("run", "") for plan in in_session]
        numbers = [int(label) for label in labels if label.isdigit()]
        if len(numbers) != len(labels) or len(set(numbers)) != len(numbers):
            numbers = list(range(1, len(in_session) + 1))
        for plan, number in zip(in_session, numbers, strict=True):
            plan.run_number = number


def _check_onsets_inside_run(run: BoldRun, trials: pd.DataFrame, n_frames: int, tr: float) -> None:
    early = trials["onset"] < 0
    if early.any():
        onset = float(trials.loc[early, "onset"].iloc[0])
        raise UserInputError(
            f"{run.events_path.name}: trial onset {onset:g} s is before the start of {run.name}; "
            f"a single-trial beta needs the trial inside the run: fix the onset or drop the row"
        )
    run_end = n_frames * tr
    late = trials["onset"] >= run_end
    if late.any():
        onset = float(trials.loc[late, "onset"].iloc[0])
        raise UserInputError(
            f"{run.events_path.name}: trial onset {onset:g} s is after the end of {run.name} "
            f"({n_frames} volumes x TR {tr:g} s = {run_end:g} s); fix the events or the TR"
        )
