"""``synthetic-spikes``: a seeded visual-cortex spiking simulator written as NWB (pynwb).

Generative model (times in seconds, a discrete-time simulation at ``dt`` = 1 ms; every random
draw comes from ``numpy.random.SeedSequence(seed)``, one child per subject and one grandchild
per session, so a seed gives the same spikes):

- **Video.** ``n_clips`` (4) clips of ``clip_seconds`` (2 s) at ``fps`` (20) frames per
  second, ``frame_size`` x ``frame_size`` (16 x 16) grey levels ``128 + 100 s(x, y, f)``: clip 0
  a grating drifting along x, clip 1 along y (``s = sin(2 pi (k . p - 2 Hz t))``, 1/8 cycle
  per pixel), clip 2 a bright and clip 3 a dark Gaussian blob (2 px s.d.) moving across the
  screen. Between clips a grey screen (128) for ``grey_seconds`` (0.5 s). Each clip is shown
  ``repeats`` (40) times in a shuffled order: one trial per showing, ``n_clips * repeats``
  (160) trials per session.
- **Receptive fields.** Unit ``u`` has a spatial filter ``F_u``: with probability 0.6 a Gabor
  (Gaussian envelope of s.d. ``s_u ~ U(1.5, 3)`` px at a centre ``c_u ~ U(3, 13)^2``,
  orientation ``U{0, 45, 90, 135} deg``, 1/8 cycle per pixel, random phase), else an ON or OFF
  centre-surround (difference of Gaussians, s.d. ``s_u`` and ``2 s_u``). The frame response
  ``r_u(f) = F_u . (frame_f / 128 - 1)`` is standardised over the video's frames; the visual
  drive is ``v_u(t) = w_u sum_tau k(tau) r_u(frame(t - tau))`` with a gamma-like temporal kernel
  ``k(tau) ~ (tau / 40 ms) exp(1 - tau / 40 ms)`` over the last 100 ms (sum 1) and
  ``w_u ~ U(0.3, 0.8)``.
- **Behaviour.** Running speed ``speed = 8 softplus(1.5 x - 0.5)`` cm/s with an AR(1)
  ``x_k = phi x_{k-1} + sqrt(1 - phi^2) e_k``, ``phi = exp(-10 ms / speed_tau)``
  (``speed_tau`` 1 s), on a 100 Hz grid; ``z`` is speed standardised over the session. A
  fraction ``modulated_fraction`` (0.3) of units is gain-modulated: ``b_u z(t)``,
  ``b_u ~ U(0.2, 0.4)`` added to the log rate (others: ``b_u = 0``).
- **Coupling.** A sparse directed graph ``W`` (``W[i, j]``: unit i -> unit j): ``n_hubs`` (5)
  hubs each excite ``U{15..25}`` targets with ``W ~ U(0.6, 1.0)``; every other ordered pair is
  an edge with probability ``edge_prob`` (0.02), of weight ``U(0.2, 0.4)``, inhibitory
  (negated) with probability 0.2. No reciprocity is imposed. The coupling input is
  ``c_j(t) = sum_i W[i, j] sum_{spikes s of i} exp(-(t - s - d) / tau_c)`` for ``t >= s + d``
  (delay ``d`` = 2 ms, ``tau_c`` = 10 ms).
- **Refractoriness.** ``h(n)`` of the steps ``n`` since the unit's last spike: 0 for
  ``n <= 2`` (absolute 2 ms), ``1 - exp(-(n - 2) / 4 ms)`` after (relative recovery).
- **Spikes.** ``lambda_u(t) = h(n_u(t)) exp(a_u + v_u(t) + b_u z(t) + c_u(t))`` with baseline
  ``a_u = log(r_u)``, ``r_u ~ lognormal(log(base_rate), 0.5)`` Hz; a spike in step ``t`` with
  probability ``1 - exp(-lambda_u(t) dt)``, at time ``t dt``.

NWB per session (``sub-XX/sub-XX_ses-S_spikes.nwb``): Units (``spike_times``, electrode group
``shank0``/``shank1`` on locations V1/LM, a ``quality`` column ``good``/``mua``,
``obs_intervals`` the whole session), the shown frames as an ``ImageSeries`` ``video`` in
``stimulus`` (uint8 ``[n_shown, h, w]``, timestamps of each frame shown, grey included),
``running_speed`` (cm/s, 100 Hz) in processing module ``behavior``, a trials table with a
``clip`` column, and the ground-truth ``W`` as scratch data ``coupling``. The simulator never
reads a model's output.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.signal import lfilter
from tqdm.auto import tqdm

from mindzoo.atomic import atomic_directory
from mindzoo.errors import UserInputError

CLIPS = ("grating-x", "grating-y", "blob-on", "blob-off")
_GREY = 128
_KERNEL_MS = 100
_KERNEL_PEAK_MS = 40.0
_DELAY_STEPS = 2
_ABS_REFRACTORY = 2
_REL_TAU = 4.0
_BEHAVIOUR_RATE = 100.0
_START = datetime(2024, 1, 1, tzinfo=timezone.utc)


class SyntheticSpikesConfig(BaseModel):
    """``simulator.*`` of synthetic-spikes (the module docstring gives the model)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    n_subjects: int = Field(default=1, ge=1)
    n_sessions: int = Field(default=1, ge=1)
    n_units: int = Field(default=120, ge=2)
    """Units per session (100-300 for realistic sizes; more for benchmarks)."""
    n_clips: int = Field(default=4, ge=1, le=len(CLIPS))
    repeats: int = Field(default=40, ge=1)
    """Showings of each clip per session (trials = n_clips * repeats)."""
    clip_seconds: float = Field(default=2.0, gt=0)
    grey_seconds: float = Field(default=0.5, ge=0)
    """Grey screen before each clip (and after the last), s."""
    fps: float = Field(default=20.0, gt=0)
    frame_size: int = Field(default=16, ge=4)
    base_rate: float = Field(default=4.0, gt=0)
    """Median baseline rate, Hz (with stimulus, speed and coupling the mean rate is about 5.5 Hz)."""
    n_hubs: int = Field(default=5, ge=0)
    hub_targets: tuple[int, int] = (15, 25)
    """Range of the number of targets of each hub (clipped to n_units - 1)."""
    edge_prob: float = Field(default=0.02, ge=0, le=1)
    coupling_tau: float = Field(default=0.01, gt=0)
    """Time constant of the exponential coupling kernel, s."""
    modulated_fraction: float = Field(default=0.3, ge=0, le=1)
    speed_tau: float = Field(default=1.0, gt=0)
    """Time scale of the running-speed AR(1) process, s."""
    dt: float = Field(default=0.001, gt=0, le=0.002)
    """Simulation step, s."""


@dataclass
class Network:
    """One session's units: filters, gains and the coupling graph."""

    log_base: np.ndarray  # [U] log Hz
    stim_weight: np.ndarray  # [U]
    filters: np.ndarray  # [U, h*w]
    speed_gain: np.ndarray  # [U], 0 for unmodulated units
    coupling: np.ndarray  # float32 [U, U], row i -> column j
    hubs: np.ndarray  # int [n_hubs]
    shank: np.ndarray  # int [U]


@dataclass
class Session:
    """One simulated session (what the NWB file holds)."""

    spike_times: list[np.ndarray]  # per unit, s
    frames: np.ndarray  # uint8 [n_shown, h, w]
    frame_times: np.ndarray  # s
    trial_start: np.ndarray
    trial_stop: np.ndarray
    trial_clip: list[str]
    speed: np.ndarray  # float32 cm/s at 100 Hz from t=0
    network: Network
    duration: float


def make_video(config: SyntheticSpikesConfig) -> np.ndarray:
    """The clips' frames: uint8 [n_clips, n_frames, h, w] (see the module docstring)."""
    n = config.frame_size
    n_frames = max(1, int(round(config.clip_seconds * config.fps)))
    t = np.arange(n_frames) / config.fps
    y, x = np.mgrid[0:n, 0:n].astype(float)
    clips = []
    for name in CLIPS[: config.n_clips]:
        if name.startswith("grating"):
            p = x if name == "grating-x" else y
            s = np.sin(2 * np.pi * (p[None] / 8.0 - 2.0 * t[:, None, None]))
        else:
            path = -2 + (n + 3) * t / max(t[-1], 1e-9)
            cx, cy = (path, n / 2 + 0 * t) if name == "blob-on" else (n / 2 + 0 * t, path)
            d2 = (x[None] - cx[:, None, None]) ** 2 + (y[None] - cy[:, None, None]) ** 2
            s = np.exp(-d2 / 8.0) * (1 if name == "blob-on" else -1)
        clips.append(np.clip(_GREY + 100 * s, 0, 255).astype(np.uint8))
    return np.stack(clips)


def make_network(rng: np.random.Generator, config: SyntheticSpikesConfig) -> Network:
    """Receptive fields, gains and the sparse directed coupling graph of one session."""
    u, n = config.n_units, config.frame_size
    y, x = np.mgrid[0:n, 0:n].astype(float)
    centres = rng.uniform(3, n - 3, size=(u, 2))
    sd = rng.uniform(1.5, 3.0, size=u)
    theta = np.deg2rad(rng.choice([0, 45, 90, 135], size=u))
    phase = rng.uniform(0, 2 * np.pi, size=u)
    gabor = rng.random(u) < 0.6
    sign = rng.choice([-1.0, 1.0], size=u)
    filters = np.empty((u, n * n))
    for k in range(u):
        dx, dy = x - centres[k, 0], y - centres[k, 1]
        d2 = dx**2 + dy**2
        if gabor[k]:
            p = dx * np.cos(theta[k]) + dy * np.sin(theta[k])
            f = np.exp(-d2 / (2 * sd[k] ** 2)) * np.cos(2 * np.pi * p / 8.0 + phase[k])
        else:
            centre = np.exp(-d2 / (2 * sd[k] ** 2)) / sd[k] ** 2
            f = sign[k] * (centre - np.exp(-d2 / (8 * sd[k] ** 2)) / (4 * sd[k] ** 2))
        filters[k] = (f / np.linalg.norm(f)).ravel()
    speed_gain = np.zeros(u)
    modulated = rng.permutation(u)[: int(round(config.modulated_fraction * u))]
    speed_gain[modulated] = rng.uniform(0.2, 0.4, size=len(modulated))
    weights = np.zeros((u, u), dtype=np.float32)
    edges = rng.random((u, u)) < config.edge_prob
    np.fill_diagonal(edges, False)
    strength = rng.uniform(0.2, 0.4, size=(u, u))
    strength[rng.random((u, u)) < 0.2] *= -1
    weights[edges] = strength[edges]
    hubs = rng.permutation(u)[: min(config.n_hubs, u)]
    low, high = (min(v, u - 1) for v in config.hub_targets)
    for hub in hubs:
        others = np.setdiff1d(np.arange(u), [hub])
        targets = rng.choice(others, size=int(rng.integers(low, high + 1)), replace=False)
        weights[hub, targets] = rng.uniform(0.6, 1.0, size=len(targets))
    return Network(
        log_base=np.log(config.base_rate) + 0.5 * rng.standard_normal(u),
        stim_weight=rng.uniform(0.3, 0.8, size=u),
        filters=filters,
        speed_gain=speed_gain,
        coupling=weights,
        hubs=np.sort(hubs),
        shank=(np.arange(u) >= u // 2).astype(int),
    )


def running_speed(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """Running speed (cm/s, float32 [n]) on a 100 Hz grid: 8 softplus(1.5 x - 0.5), x AR(1)."""
    phi = np.exp(-1.0 / (_BEHAVIOUR_RATE * tau))
    noise = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    noise[0] = rng.standard_normal()
    x = lfilter([1.0], [1.0, -phi], noise)
    return (8.0 * np.logaddexp(0.0, 1.5 * x - 0.5)).astype(np.float32)


def _timeline(
    rng: np.random.Generator, config: SyntheticSpikesConfig, n_clip_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trial order and frame onsets: (clip per trial, trial starts s, frame onsets s, frame ids
    with 0 = grey and 1 + clip * n_clip_frames + f)."""
    order = rng.permutation(np.repeat(np.arange(config.n_clips), config.repeats))
    cycle = config.grey_seconds + config.clip_seconds
    starts = config.grey_seconds + cycle * np.arange(len(order))
    onsets, ids = [], []
    for start, clip in zip(starts, order, strict=True):
        onsets.append(start - config.grey_seconds)
        ids.append(0)
        onsets.extend(start + np.arange(n_clip_frames) / config.fps)
        ids.extend(1 + clip * n_clip_frames + np.arange(n_clip_frames))
    onsets.append(starts[-1] + config.clip_seconds)
    ids.append(0)
    return order, starts, np.asarray(onsets), np.asarray(ids)


def simulate_session(
    rng: np.random.Generator, config: SyntheticSpikesConfig, video: np.ndarray
) -> Session:
    """Simulate one session (the model of the module docstring), step by step over ``dt``."""
    network = make_network(rng, config)
    n_clips, n_clip_frames = video.shape[:2]
    library = np.concatenate([np.full((1, *video.shape[2:]), _GREY, np.uint8), *video])
    order, starts, onsets, ids = _timeline(rng, config, n_clip_frames)
    dt = config.dt
    duration = float(onsets[-1] + config.grey_seconds)
    n_steps = int(round(duration / dt))
    contrast = library.reshape(len(library), -1) / _GREY - 1.0
    response = contrast @ network.filters.T  # [n_library, U]
    response = (response - response.mean(0)) / (response.std(0) + 1e-9)
    response *= network.stim_weight
    step_times = np.arange(n_steps) * dt
    frame_at = ids[np.clip(np.searchsorted(onsets, step_times + 1e-9, "right") - 1, 0, None)]
    lags = np.arange(int(round(_KERNEL_MS * 1e-3 / dt))) * dt * 1e3  # ms
    kernel = (lags / _KERNEL_PEAK_MS) * np.exp(1 - lags / _KERNEL_PEAK_MS)
    kernel /= kernel.sum()
    n_speed = int(np.ceil(duration * _BEHAVIOUR_RATE)) + 1
    speed = running_speed(rng, n_speed, config.speed_tau)
    z = (speed - speed.mean()) / (speed.std() + 1e-9)
    z_at = z[np.minimum((step_times * _BEHAVIOUR_RATE).astype(int), n_speed - 1)]

    u = config.n_units
    decay = np.exp(-dt / config.coupling_tau)
    since_max = 64
    n_since = np.arange(since_max + 1)
    recovery = np.where(
        n_since <= _ABS_REFRACTORY, 0.0, -np.expm1(-(n_since - _ABS_REFRACTORY) / _REL_TAU)
    )
    recovery[-1] = 1.0
    ring = np.zeros((_DELAY_STEPS + 1, u))
    coupling_input = np.zeros(u)
    last = np.full(u, -10 * since_max)
    spike_steps: list[np.ndarray] = []
    spike_units: list[np.ndarray] = []
    weights = network.coupling.astype(np.float64)
    block = 2000
    for b0 in range(0, n_steps, block):
        b1 = min(n_steps, b0 + block)
        lo = max(0, b0 - len(kernel) + 1)
        visual = lfilter(kernel, [1.0], response[frame_at[lo:b1]], axis=0)[b0 - lo :]
        drive = network.log_base + visual + np.outer(z_at[b0:b1], network.speed_gain)
        uniform = rng.random((b1 - b0, u))
        for k in range(b1 - b0):
            t = b0 + k
            slot = t % len(ring)
            coupling_input *= decay
            coupling_input += ring[slot]
            ring[slot] = 0.0
            rate = np.exp(drive[k] + coupling_input)
            rate *= recovery[np.minimum(t - last, since_max)]
            fired = np.flatnonzero(uniform[k] < -np.expm1(-rate * dt))
            if len(fired):
                last[fired] = t
                spike_steps.append(np.full(len(fired), t))
                spike_units.append(fired)
                ring[(t + _DELAY_STEPS) % len(ring)] += weights[fired].sum(0)
    steps = np.concatenate(spike_steps) if spike_steps else np.zeros(0, int)
    units = np.concatenate(spike_units) if spike_units else np.zeros(0, int)
    per_unit = [steps[units == k] * dt for k in range(u)]
    clip_names = [CLIPS[c] for c in order]
    return Session(
        spike_times=per_unit,
        frames=library[ids],
        frame_times=onsets,
        trial_start=starts,
        trial_stop=starts + config.clip_seconds,
        trial_clip=clip_names,
        speed=speed,
        network=network,
        duration=duration,
    )


def write_session_nwb(path: Path, subject: str, session: str, data: Session) -> None:
    """Write one simulated session as an NWB file (layout in the module docstring)."""
    from pynwb import NWBHDF5IO, NWBFile, ProcessingModule, TimeSeries
    from pynwb.file import Subject
    from pynwb.image import ImageSeries

    nwbfile = NWBFile(
        session_description="mindzoo synthetic-spikes: simulated visual cortex under a video",
        identifier=f"mindzoo-synthetic-spikes-sub-{subject}-ses-{session}",
        session_start_time=_START,
        file_create_date=[_START],
        session_id=session,
        subject=Subject(subject_id=subject, species="Mus musculus", description="simulated"),
    )
    device = nwbfile.create_device(name="probe", description="simulated 2-shank probe")
    groups = [
        nwbfile.create_electrode_group(
            name=f"shank{k}", description="simulated shank", location=loc, device=device
        )
        for k, loc in enumerate(("V1", "LM"))
    ]
    nwbfile.add_unit_column(name="quality", description="sorting quality (good or mua)")
    for k, times in enumerate(data.spike_times):
        nwbfile.add_unit(
            spike_times=times,
            electrode_group=groups[int(data.network.shank[k])],
            obs_intervals=[[0.0, data.duration]],
            quality="mua" if k % 10 == 9 else "good",
        )
    nwbfile.add_stimulus(
        ImageSeries(
            name="video",
            data=data.frames,
            unit="n.a.",
            format="raw",
            timestamps=data.frame_times,
            description="grey-level video frames as shown (grey screen between clips)",
        )
    )
    behavior = ProcessingModule(name="behavior", description="simulated running")
    nwbfile.add_processing_module(behavior)
    behavior.add(
        TimeSeries(
            name="running_speed",
            data=data.speed,
            unit="cm/s",
            rate=_BEHAVIOUR_RATE,
            starting_time=0.0,
            description="softplus of an AR(1) process (synthetic-spikes)",
        )
    )
    nwbfile.add_trial_column(name="clip", description="the clip shown")
    for start, stop, clip in zip(data.trial_start, data.trial_stop, data.trial_clip, strict=True):
        nwbfile.add_trial(start_time=float(start), stop_time=float(stop), clip=clip)
    nwbfile.add_scratch(
        data.network.coupling,
        name="coupling",
        description="ground-truth coupling weights [unit, unit]: row i -> column j (log-rate)",
    )
    # object ids are random UUIDs by default: derive them from the identifier (same seed, same
    # bytes)
    for k, child in enumerate(nwbfile.all_children()):
        child._AbstractContainer__object_id = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{nwbfile.identifier}/{k}")
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


def simulate_bids(out_dir: Path, config: SyntheticSpikesConfig, progress: bool = True) -> Path:
    """Simulate every subject/session and write one NWB file each under ``out_dir`` (plus
    ``dataset_description.json``); return it. Built in a temporary sibling and renamed at the
    end, so a failed run leaves nothing behind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(
            f"Output directory {out_dir} already exists and is not empty; remove it or choose another"
        )
    video = make_video(config)
    with atomic_directory(out_dir) as tmp:
        seeds = np.random.SeedSequence(config.seed).spawn(config.n_subjects)
        jobs = [
            (s, k, child)
            for s, seed in enumerate(seeds)
            for k, child in enumerate(seed.spawn(config.n_sessions))
        ]
        for s, k, child in tqdm(
            jobs, desc="simulating spikes", unit="session", disable=not progress
        ):
            subject, session = f"{s + 1:02d}", str(k + 1)
            data = simulate_session(np.random.default_rng(child), config, video)
            name = f"sub-{subject}_ses-{session}_spikes.nwb"
            write_session_nwb(tmp / f"sub-{subject}" / name, subject, session, data)
        (tmp / "dataset_description.json").write_text(
            json.dumps(
                {
                    "Name": "mindzoo synthetic-spikes",
                    "BIDSVersion": "1.9.0",
                    "DatasetType": "raw",
                    "GeneratedBy": [{"Name": "mindzoo.datasets.synthetic.spikes"}],
                    "Simulator": config.model_dump(mode="json"),
                },
                indent=2,
            )
        )
    return out_dir
