"""Channels of a recording: contact names, re-referencing, and the selection of kept channels.

Re-referencing is one matrix product: ``bipolar`` takes the difference of neighbouring
contacts of one shaft (shaft = ``group`` column of electrodes.tsv, else the letters of the
contact name: ``LA1``, ``LA2`` -> shaft ``LA``; contacts ``n`` and ``n+1`` pair when both are
good and, with positions, no further apart than 2.5x the shaft's median spacing), or pairs
given explicitly (a pair is named ``LA1-LA2``, sits at the contacts' midpoint and takes the
anode's region); ``average`` subtracts the mean of the good channels; ``none``.

Selection, per subject: region selection (``channels.regions``) and top-k selection
(``channels.top_k``): a ridge classifier fitted on the training trials to per-channel features
(mean and log mean square of the signal in 100 ms bins, standardised) plays the role of Du-IN's
spatial projection ``W`` and channels are ranked by mean ``|W|`` over classes and features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import sparse

from mindzoo.errors import UserInputError
from mindzoo.pipelines.ephys.config import ChannelSettings, EphysPipelineConfig

# Width of the bins of the top-k ranking features, in seconds.
_RANK_BIN_S = 0.1
# Two contacts of one shaft further apart than this many median spacings are not neighbours.
_MAX_SPACING_RATIO = 2.5
UNKNOWN_REGION = "unknown"


@dataclass
class Channels:
    """Channels of a recording after re-referencing: data rows and their metadata."""

    names: list[str]
    types: list[str]
    xyz: np.ndarray
    regions: list[str]


def split_contact(name: str) -> tuple[str, int | None]:
    """``"LA12"`` -> ``("LA", 12)``; a name without a trailing number -> ``(name, None)``."""
    match = re.fullmatch(r"(.*?)(\d+)", name)
    if match is None or not match[1]:
        return name, None
    return match[1], int(match[2])


# --- re-referencing ----------------------------------------------------------------------------


def neighbour_pairs(names: list[str], shafts: list[str], xyz: np.ndarray) -> list[tuple[str, str]]:
    """Bipolar pairs (n, n+1) of neighbouring contacts along each shaft.

    Contacts are ordered by the number in their name; with positions, a pair further apart than
    2.5x the montage's median neighbour distance (a gap, e.g. a broken contact's place taken by
    the next) is skipped.
    """
    by_shaft: dict[str, list[tuple[int, int]]] = {}
    for index, (name, shaft) in enumerate(zip(names, shafts, strict=True)):
        number = split_contact(name)[1]
        if number is not None:
            by_shaft.setdefault(shaft, []).append((number, index))
    candidates = []
    for contacts in by_shaft.values():
        contacts.sort()
        candidates += [(a, b) for (na, a), (nb, b) in pairwise(contacts) if nb == na + 1]
    distances = np.array([np.linalg.norm(xyz[a] - xyz[b]) for a, b in candidates])
    known = distances[np.isfinite(distances)]
    limit = _MAX_SPACING_RATIO * np.median(known) if len(known) else np.inf
    return [
        (names[a], names[b])
        for (a, b), d in zip(candidates, distances, strict=True)
        if not np.isfinite(d) or d <= limit
    ]


def bipolar_matrix(names: list[str], pairs: list[tuple[str, str]]) -> np.ndarray:
    """Re-referencing matrix M [n_pairs, n_channels]: row i is +1 at the anode, -1 at the
    cathode of pair i, so ``M @ data`` is every bipolar derivation at once."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(pairs), len(names)))
    for row, (anode, cathode) in enumerate(pairs):
        matrix[row, index[anode]] = 1.0
        matrix[row, index[cathode]] = -1.0
    return matrix


def check_pairs(
    pairs: list[tuple[str, str]], names: list[str], shafts: list[str], bads: list[str], where: str
) -> None:
    """Explicit pairs must name good contacts of one shaft."""
    shaft_of = dict(zip(names, shafts, strict=True))
    for anode, cathode in pairs:
        for contact in (anode, cathode):
            if contact in bads:
                raise UserInputError(
                    f"{where}: bipolar pair {anode}-{cathode} uses bad channel {contact}; "
                    "drop the pair from pipeline.bipolar_pairs"
                )
            if contact not in shaft_of:
                raise UserInputError(
                    f"{where}: bipolar pair {anode}-{cathode} names {contact}, not a data "
                    "channel of the recording; fix pipeline.bipolar_pairs"
                )
        if shaft_of[anode] != shaft_of[cathode]:
            raise UserInputError(
                f"{where}: bipolar pair {anode}-{cathode} spans two shafts "
                f"({shaft_of[anode]}, {shaft_of[cathode]}); pair contacts of one shaft"
            )


def rereference(
    data: np.ndarray,
    channels: Channels,
    shafts: list[str],
    bads: list[str],
    config: EphysPipelineConfig,
    where: str,
) -> tuple[np.ndarray, Channels]:
    """Apply ``config.reference`` to data [channel, time] as one matrix product."""
    if config.reference == "none":
        return data, channels
    if config.reference == "average":
        return data - data.mean(axis=0, keepdims=True), channels
    if config.bipolar_pairs is not None:
        pairs = [tuple(p) for p in config.bipolar_pairs]
        check_pairs(pairs, channels.names, shafts, bads, where)
    else:
        pairs = neighbour_pairs(channels.names, shafts, channels.xyz)
    if not pairs:
        raise UserInputError(
            f"{where}: no bipolar pairs (no neighbouring good contacts named like LA1, LA2 on "
            "one shaft); use --set pipeline.reference=average or give pipeline.bipolar_pairs"
        )
    index = {n: i for i, n in enumerate(channels.names)}
    anodes = [index[a] for a, _ in pairs]
    cathodes = [index[c] for _, c in pairs]
    derived = Channels(
        names=[f"{a}-{c}" for a, c in pairs],
        types=[channels.types[a] for a in anodes],
        xyz=(channels.xyz[anodes] + channels.xyz[cathodes]) / 2,
        regions=[channels.regions[a] for a in anodes],
    )
    # sparse: two non-zeros per row, so the product costs two operations per output sample
    matrix = sparse.csr_matrix(bipolar_matrix(channels.names, pairs))
    return matrix @ data, derived


# --- selection ---------------------------------------------------------------------------------


def rank_channels(
    signals: np.ndarray, labels: np.ndarray, train: np.ndarray, sfreq: float, alpha: float
) -> np.ndarray:
    """Channel indices by decreasing mean |W| of a linear classifier fitted on training trials.

    Features per channel: mean and log mean square in 100 ms bins, standardised with training
    statistics so that weights compare across channels.
    """
    from sklearn.linear_model import RidgeClassifier

    n_trials, n_channels, n_times = signals.shape
    width = max(1, int(round(_RANK_BIN_S * sfreq)))
    n_bins = max(1, n_times // width)
    binned = signals[:, :, : n_bins * width].reshape(n_trials, n_channels, n_bins, width)
    features = np.stack(
        [binned.mean(axis=3), np.log(np.square(binned).mean(axis=3) + 1e-12)], axis=3
    ).reshape(n_trials, -1)
    mean = features[train].mean(axis=0)
    std = features[train].std(axis=0)
    std[std == 0] = 1.0
    features = (features - mean) / std
    classes = np.unique(labels[train])
    if len(classes) < 2:
        raise UserInputError(
            "pipeline.channels.top_k needs at least two classes among the training trials"
        )
    model = RidgeClassifier(alpha=alpha).fit(features[train], labels[train])
    weights = np.abs(np.atleast_2d(model.coef_)).reshape(-1, n_channels, n_bins * 2)
    importance = weights.mean(axis=(0, 2))
    return np.argsort(-importance, kind="stable")


def select_channels(
    subject: str,
    signals: np.ndarray,
    regions: list[str],
    labels: np.ndarray,
    train: np.ndarray,
    sfreq: float,
    settings: ChannelSettings,
) -> np.ndarray:
    """Indices of the channels to keep: region selection, then top-k ranking (kept in order)."""
    keep = np.arange(signals.shape[1])
    if settings.regions is not None:
        wanted = set(settings.regions)
        keep = np.array([i for i in keep if regions[i] in wanted], dtype=int)
        if not len(keep):
            raise UserInputError(
                f"{subject}: no channel in regions {settings.regions} (regions here: "
                f"{', '.join(sorted(set(regions)))}; column {settings.region_column!r} of "
                "electrodes.tsv); fix pipeline.channels.regions"
            )
    if settings.top_k is not None and settings.top_k < len(keep):
        order = rank_channels(signals[:, keep], labels, train, sfreq, settings.ridge_alpha)
        keep = np.sort(keep[order[: settings.top_k]])
    return keep
