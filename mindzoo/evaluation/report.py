"""Evaluation report: ``report.md`` with metric tables and PNG figures beside it.

:func:`write_report` takes the ``metrics.json`` layout (``dataset``, ``model``, ``subjects``,
``mean``) plus, per subject, the arrays needed for figures (:class:`SubjectResult`), and writes:

- ``report.md``: title, dataset and model, one table per subject (metric, value, chance level),
  a summary table with the mean over subjects, and links to the figures;
- ``<subject>_identification.png``: Pearson r between every ground truth and every prediction
  (a bright diagonal means the test items are identifiable);
- ``<subject>_noise_ceiling.png``: the voxel noise ceiling on axial slices of the subject's volume;
- ``<subject>_retrieval.png``: test images next to the images their predictions retrieve.

Figures use matplotlib's Agg canvas directly (no GUI backend, no pyplot state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mindzoo.errors import UserInputError
from mindzoo.evaluation.image_metrics import DISTANCE_COLUMNS, LITE0_COLUMNS, STANDARD_COLUMNS
from mindzoo.evaluation.metrics import pearson_matrix

N_AXIAL_SLICES = 5
N_RETRIEVAL_ROWS = 6
N_RETRIEVED = 4


@dataclass
class SubjectResult:
    """Arrays behind one subject's figures.

    ``pred``/``true``: ``[n_test, d]`` features in the main space. ``noise_ceiling``: ``[voxel]``
    fraction of explainable variance. ``voxel_ijk``: ``[voxel, 3]`` integer indices into a volume
    of ``volume_shape`` with voxel-to-mm ``affine`` (4x4). ``test_images``: uint8
    ``[n_test, h, w, 3]``. Optional fields left ``None`` skip the figure that needs them.
    """

    pred: np.ndarray
    true: np.ndarray
    noise_ceiling: np.ndarray | None = None
    voxel_ijk: np.ndarray | None = None
    affine: np.ndarray | None = None
    volume_shape: tuple | None = None
    test_images: np.ndarray | None = None


def write_report(
    out_dir: Path, metrics: dict, subject_results: dict[str, SubjectResult], title: str
) -> Path:
    """Write ``report.md`` and its figures into ``out_dir``; returns the path of ``report.md``."""
    subjects = _subject_metrics(metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    lines = [
        f"# {title}",
        "",
        f"- Dataset: `{metrics.get('dataset', 'unknown')}`",
        f"- Model: `{metrics.get('model', 'unknown')}`",
        "",
        "Two-way identification saturates near 1.0 in deep-feature spaces; compare models by "
        "retrieval top-1 and feature correlation.",
        "",
        "## Summary",
        "",
        *_summary_table(subjects, metrics.get("mean", {})),
    ]
    for subject, values in subjects.items():
        result = subject_results.get(subject)
        n_test = None if result is None else len(result.pred)
        lines += ["", f"## {subject}", "", *_subject_table(values, n_test)]
        if result is not None:
            for block in _subject_figures(out_dir, subject, result):
                lines += ["", block]

    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _subject_metrics(metrics: dict) -> dict[str, dict]:
    """The ``subjects`` mapping of a metrics dict, validated."""
    subjects = metrics.get("subjects")
    if not isinstance(subjects, dict) or not subjects:
        raise UserInputError(
            "metrics has no 'subjects' mapping (e.g. {'sub-01': {'two_way_id.<space>': ...}}); "
            "pass the metrics.json written by `braindecode-cli train`"
        )
    return dict(sorted(subjects.items()))


# ----------------------------------------------------------------------------- tables
def _format(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.3f}"


def _chance(metric: str, n_test: int | None) -> str:
    """Chance level of a metric key (``<metric>.<space>``), or an em dash if it has none."""
    kind = metric.split(".", 1)[0]
    if kind == "two_way_id":
        return "0.500"
    if kind == "retrieval_top1" and n_test:
        return f"{1 / n_test:.3f} (1/{n_test})"
    return "—"


def _subject_table(values: dict, n_test: int | None) -> list[str]:
    rows = ["| metric | value | chance |", "|---|---|---|"]
    rows += [f"| {key} | {_format(val)} | {_chance(key, n_test)} |" for key, val in values.items()]
    return rows


def _summary_table(subjects: dict[str, dict], mean: dict) -> list[str]:
    keys = list(dict.fromkeys(key for values in subjects.values() for key in values))
    rows = ["| subject | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for subject, values in subjects.items():
        rows.append(f"| {subject} | " + " | ".join(_format(values.get(k, "")) for k in keys) + " |")
    if mean:
        rows.append("| **mean** | " + " | ".join(_format(mean.get(k, "")) for k in keys) + " |")
    return rows


# ---------------------------------------------------------------------- reconstruction
def reconstruction_section(rows: list[tuple[str, dict]], grid_png: Path | None) -> str:
    """Markdown for the reconstruction part of a report.

    ``rows`` are ``(label, metrics)`` pairs: a label such as ``"brain-it sub-01"`` and the dict
    returned by :func:`mindzoo.evaluation.image_metrics.reconstruction_metrics`.
    Renders the field's 8-column table (PixCorr, SSIM, Alex(2), Alex(5), Incep, CLIP, Eff, SwAV;
    blank cells where a backbone was unavailable, with the reasons listed below it), a second
    table with the offline efficientnet-lite0 columns (and retrieval, when present), and the
    comparison grid ``grid_png`` (embedded as given: pass it relative to the report).
    """
    if not rows:
        raise UserInputError("reconstruction_section needs at least one (label, metrics) row")
    for label, metrics in rows:
        missing = [c for c in (*STANDARD_COLUMNS, *LITE0_COLUMNS) if c not in metrics]
        if missing:
            raise UserInputError(
                f"Reconstruction metrics for {label!r} lack {', '.join(missing)}; "
                "pass the dict returned by reconstruction_metrics"
            )
    extra = list(dict.fromkeys(k for _, m in rows for k in m if k.startswith("retrieval ")))
    lines = [
        "## Reconstruction",
        "",
        "Metrics as defined by MindEye2's `final_evaluations`: PixCorr, SSIM and the two-way "
        "identification columns Alex(2), Alex(5), Incep and CLIP (chance 0.5) are higher-is-"
        "better; Eff and SwAV are mean correlation distances, lower is better.",
        "",
        *_recon_table(rows, STANDARD_COLUMNS),
    ]
    notes = _blank_column_notes(rows)
    if notes:
        lines += ["", "Blank columns:"]
        lines += [f"- {', '.join(columns)}: {why}" for why, columns in notes.items()]
    lines += [
        "",
        "Offline metric space (efficientnet-lite0, ships with mindzoo; retrieval: top-1 by "
        "cosine similarity of predicted vs true embeddings, chance 1/n up to 300 items):",
        "",
        *_recon_table(rows, (*LITE0_COLUMNS, *extra)),
    ]
    if grid_png is not None:
        lines += [
            "",
            f"![Reconstructions: ground truth first, then one row per model and subject]"
            f"({Path(grid_png).as_posix()})",
        ]
    return "\n".join(lines) + "\n"


def _recon_table(rows: list[tuple[str, dict]], columns) -> list[str]:
    arrows = [("↓" if c in DISTANCE_COLUMNS or c.endswith("distance") else "↑") for c in columns]
    header = " | ".join(f"{c} {a}" for c, a in zip(columns, arrows, strict=True))
    table = [f"| model | {header} |", "|---" + "|---:" * len(columns) + "|"]
    for label, metrics in rows:
        cells = ["" if metrics.get(c) is None else _format(metrics[c]) for c in columns]
        table.append(f"| {label} | " + " | ".join(cells) + " |")
    return table


def _blank_column_notes(rows: list[tuple[str, dict]]) -> dict[str, list[str]]:
    """``{reason: [columns]}`` over all rows, columns in table order."""
    notes: dict[str, list[str]] = {}
    for column in STANDARD_COLUMNS:
        for _, metrics in rows:
            if metrics.get(column) is None:
                why = metrics.get("notes", {}).get(column, "not computed")
                if column not in notes.setdefault(why, []):
                    notes[why].append(column)
    return notes


# ---------------------------------------------------------------------------- figures
def _subject_figures(out_dir: Path, subject: str, result: SubjectResult) -> list[str]:
    """Draw the figures this result has data for; return their markdown paragraphs."""
    lines = []
    if result.noise_ceiling is not None:
        nc = np.asarray(result.noise_ceiling, dtype=np.float64)
        lines.append(
            f"Noise ceiling: median {np.nanmedian(nc):.3f} over {nc.size} voxels "
            "(fraction of the trial-averaged response variance that is explainable)."
        )

    name = f"{subject}_identification.png"
    _identification_figure(result.pred, result.true, subject).savefig(out_dir / name, dpi=100)
    lines.append(f"![{subject} identification matrix]({name})")

    if result.noise_ceiling is not None and result.voxel_ijk is not None:
        name = f"{subject}_noise_ceiling.png"
        _noise_ceiling_figure(result, subject).savefig(out_dir / name, dpi=100)
        lines.append(f"![{subject} noise ceiling]({name})")

    if result.test_images is not None:
        name = f"{subject}_retrieval.png"
        _retrieval_figure(result, subject).savefig(out_dir / name, dpi=100)
        lines.append(f"![{subject} retrieval examples]({name})")
    return lines


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _identification_figure(pred: np.ndarray, true: np.ndarray, subject: str) -> Figure:
    r = pearson_matrix(true, pred)
    fig = _new_figure(5.5, 4.5)
    ax = fig.add_subplot()
    image = ax.imshow(r, cmap="viridis", interpolation="nearest")
    ax.set_xlabel("prediction j")
    ax.set_ylabel("ground truth i")
    ax.set_title(f"{subject}: Pearson r(true i, pred j)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def _noise_ceiling_figure(result: SubjectResult, subject: str) -> Figure:
    from nilearn import plotting  # slow import; only needed for this figure

    if result.affine is None or result.volume_shape is None:
        raise UserInputError(
            f"{subject}: a noise-ceiling map needs affine and volume_shape with voxel_ijk; "
            "pass the store's voxel geometry"
        )
    ijk = np.asarray(result.voxel_ijk, dtype=np.int64)
    nc = np.nan_to_num(np.asarray(result.noise_ceiling, dtype=np.float32))
    if ijk.shape != (nc.size, 3):
        raise UserInputError(
            f"{subject}: voxel_ijk has shape {ijk.shape} but there are {nc.size} noise-ceiling "
            "values; pass one (i, j, k) index per voxel"
        )
    affine = np.asarray(result.affine, dtype=np.float64)
    shape = tuple(int(s) for s in result.volume_shape)[:3]
    stat = np.zeros(shape, dtype=np.float32)
    stat[tuple(ijk.T)] = np.clip(nc, 0, 1)  # negative estimates mean "no explainable variance"
    mask = np.zeros(shape, dtype=np.float32)
    mask[tuple(ijk.T)] = 1.0

    fig = _new_figure(2.2 * N_AXIAL_SLICES, 2.6)
    plotting.plot_stat_map(
        nib.Nifti1Image(stat, affine),
        bg_img=nib.Nifti1Image(mask, affine),  # the voxel mask outlines the brain
        display_mode="z",
        cut_coords=_axial_cuts(ijk, affine),
        figure=fig,
        cmap="inferno",
        symmetric_cbar=False,
        vmin=0.0,
        vmax=max(float(stat.max()), 1e-3),
        black_bg=True,
        draw_cross=False,
        title=f"{subject} noise ceiling",
    )
    return fig


def _axial_cuts(ijk: np.ndarray, affine: np.ndarray) -> list[float]:
    """Evenly spaced axial slices (mm) through the extent of the voxels, ends excluded."""
    ks = np.linspace(ijk[:, 2].min(), ijk[:, 2].max(), N_AXIAL_SLICES + 2)[1:-1]
    centre = ijk.mean(axis=0)
    points = np.column_stack([np.full_like(ks, centre[0]), np.full_like(ks, centre[1]), ks])
    z_mm = nib.affines.apply_affine(affine, points)[:, 2]
    return sorted({round(float(z), 1) for z in z_mm})


def _retrieval_figure(result: SubjectResult, subject: str) -> Figure:
    """Rows of test items: the seen image, then the test images its prediction ranks highest."""
    images = np.asarray(result.test_images)
    n_test = len(result.pred)
    if images.ndim != 4 or len(images) != n_test:
        raise UserInputError(
            f"{subject}: test_images has shape {images.shape}; pass uint8 [{n_test}, h, w, 3] "
            "in the order of the predictions"
        )
    r = pearson_matrix(result.true, result.pred)  # [true i, pred j]
    items = np.linspace(0, n_test - 1, min(N_RETRIEVAL_ROWS, n_test)).astype(int)
    n_cols = 1 + min(N_RETRIEVED, n_test)
    fig = _new_figure(1.4 * n_cols, 1.5 * len(items))
    axes = fig.subplots(len(items), n_cols, squeeze=False)
    for row, item in zip(axes, items, strict=True):
        ranked = np.argsort(-r[:, item], kind="stable")[: n_cols - 1]
        _show(row[0], images[item], "seen", "black")
        for rank, (ax, found) in enumerate(zip(row[1:], ranked, strict=True), start=1):
            colour = "limegreen" if found == item else "lightgray"
            _show(ax, images[found], f"#{rank}", colour)
    fig.suptitle(f"{subject}: retrieval among {n_test} test images (green = correct)")
    fig.tight_layout()
    return fig


def _show(ax, image: np.ndarray, label: str, colour: str) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(label, fontsize=8)
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
