"""Run a list of independent jobs here (a process pool) or on Slurm (submitit), one code path.

A job is a top-level function and its arguments (both picklable: they travel to another process
or node). :func:`run_jobs` runs every job, retries failed ones up to ``retries`` times and
returns one :class:`JobOutcome` per job, in order, with its value or its error, its wall time,
its peak resident memory and its log file. It never raises for a failed job: callers decide.

- ``local``: a process pool of ``jobs`` workers on this machine, forked from a ``forkserver``
  that has imported the job's module (a worker starts in milliseconds and runs several jobs;
  each job's peak memory is counted afresh); each job's stdout and
  stderr go to ``LOG_DIR/<name>.log``.
- ``slurm``: submitit job arrays (``map_array``) on the partition given, at most
  ``max_parallel`` running at once; logs are submitit's ``LOG_DIR/<job id>_<task>_log.*``.
  Anything else submitit or sbatch takes goes through ``slurm_set`` (``qos=high``,
  ``account=lab``, ``constraint=a100``: submitit parameters by name, the rest as sbatch options).

Every job sets its BLAS/OpenMP/torch threads to ``cpus`` before it runs, so N workers on N*c
cores use all of them without oversubscribing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mindzoo.errors import UserInputError

EXECUTORS = ("local", "slurm")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
JOB_THREADS = "MINDZOO_JOB_THREADS"  # set inside a job: the threads it may use (its --cpus)


@dataclass(frozen=True)
class ExecutorSettings:
    """Where and with what resources jobs run (the `--executor ...` options of the CLI).

    ``cpus``: CPU cores (and BLAS threads) per job, default: this machine's cores / ``jobs``
    locally, 1 on Slurm. ``mem_gb``/``time_min``/``partition``/``gpus``/``max_parallel``/
    ``slurm_set`` are Slurm's; ``jobs`` is the local pool's size.
    """

    kind: Literal["local", "slurm"] = "local"
    jobs: int = 1
    cpus: int | None = None
    gpus: int = 0
    mem_gb: float | None = None
    time_min: int = 60
    partition: str | None = None
    max_parallel: int | None = None
    slurm_set: dict[str, str] = field(default_factory=dict)
    retries: int = 0

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserInputError(
                f"Unknown executor {self.kind!r}; choose from {', '.join(EXECUTORS)}"
            )
        for name in ("jobs", "time_min"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name.replace('_min', '')} must be at least 1")
        if self.cpus is not None and self.cpus < 1:
            raise UserInputError("--cpus must be at least 1")
        if self.retries < 0 or self.gpus < 0:
            raise UserInputError("--retries and --gpus cannot be negative")

    @property
    def cpus_per_job(self) -> int:
        """BLAS threads (and Slurm cpus-per-task) of one job."""
        if self.cpus is not None:
            return self.cpus
        if self.kind == "slurm":
            return 1
        return max(1, (os.cpu_count() or 1) // self.jobs)

    @property
    def workers(self) -> int:
        """How many jobs run at once: the local pool's size, Slurm's --max-parallel (else 8)."""
        if self.kind == "slurm":
            return self.max_parallel or 8
        return self.jobs

    @property
    def parallel(self) -> bool:
        """Whether jobs run outside this process (Slurm, or more than one local worker)."""
        return self.kind == "slurm" or self.jobs > 1


def parse_slurm_set(values: Sequence[str]) -> dict[str, str]:
    """``["qos=high", "account=lab"]`` -> ``{"qos": "high", "account": "lab"}``."""
    parsed = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--slurm-set {value!r}: expected KEY=VALUE, e.g. qos=high")
        parsed[key.strip().replace("-", "_")] = text.strip()
    return parsed


@dataclass
class JobOutcome:
    """One job's result: ``value`` when it succeeded, else ``error`` (one line) and its log."""

    name: str
    value: Any = None
    error: str | None = None
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    log: Path | None = None
    attempts: int = 0
    job_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def job_threads(default: int = 1) -> int:
    """Threads the running job may use (its ``--cpus``), or ``default`` outside a job."""
    try:
        return max(1, int(os.environ.get(JOB_THREADS, default)))
    except ValueError:
        return default


def set_threads(n: int) -> None:
    """Use ``n`` BLAS/OpenMP threads in this process (environment, threadpoolctl and torch)."""
    os.environ[JOB_THREADS] = str(n)
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, MiB.

    Linux: the process's own high-water mark (``VmHWM``: ``ru_maxrss`` would carry over the
    parent's peak into a spawned worker); elsewhere ``ru_maxrss``.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        own = int(line.split()[1]) / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return max(own, children)


def reset_peak_rss() -> None:
    """Start this process's peak-memory count afresh (Linux: ``clear_refs`` 5 resets VmHWM), so
    a pool worker that runs several jobs reports each job's own peak."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def measured_call(fn: Callable[..., Any], args: tuple, cpus: int) -> dict[str, Any]:
    """Run ``fn(*args)`` with ``cpus`` threads; its value with wall time (s) and peak RSS (MiB).

    This is what runs inside every job, local or Slurm.
    """
    set_threads(cpus)
    reset_peak_rss()
    start = time.perf_counter()
    value = fn(*args)
    return {"value": value, "wall_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def _local_job(
    fn: Callable[..., Any], args: tuple, cpus: int, log: str, environ: dict[str, str]
) -> dict[str, Any]:
    """A local worker's job: stdout/stderr (file descriptors too) into ``log``; errors as text.

    ``environ`` is the submitting process's environment at submission (the forkserver's own is
    that of its start, which may be older)."""
    os.environ.clear()
    os.environ.update(environ)
    with open(log, "ab", buffering=0) as handle, _redirected(handle.fileno()):
        try:
            return measured_call(fn, args, cpus)
        except BaseException as exc:
            traceback.print_exc()
            sys.stderr.flush()
            return {"error": _one_line(exc), "peak_rss_mb": peak_rss_mb()}


@contextlib.contextmanager
def _redirected(fd: int) -> Iterator[None]:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()


def _init_worker(cpus: int) -> None:
    for variable in _THREAD_VARIABLES:  # before numpy/torch are imported by the job
        os.environ[variable] = str(cpus)


def run_jobs(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    names: Sequence[str],
    settings: ExecutorSettings,
    log_dir: Path,
    progress: bool = True,
    job_name: str = "mindzoo",
) -> list[JobOutcome]:
    """Run ``fn(*item)`` for every item with ``settings``; one outcome per item, in order.

    Failed jobs are retried up to ``settings.retries`` times. ``log_dir`` receives the logs.
    A Ctrl-C cancels what has not finished (Slurm jobs included) and re-raises.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    outcomes = [JobOutcome(name) for name in names]
    todo = list(range(len(items)))
    runner = _run_slurm if settings.kind == "slurm" else _run_local
    for _attempt in range(settings.retries + 1):
        if not todo:
            break
        runner(fn, items, todo, outcomes, settings, log_dir, progress, job_name)
        todo = [i for i in todo if not outcomes[i].ok]
    return outcomes


def _record(outcome: JobOutcome, result: dict[str, Any]) -> None:
    outcome.attempts += 1
    outcome.error = result.get("error")
    outcome.value = result.get("value")
    outcome.wall_s = float(result.get("wall_s", 0.0))
    outcome.peak_rss_mb = float(result.get("peak_rss_mb", 0.0))


def _progress_bar(total: int, progress: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="job", disable=not progress)


def _run_local(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    todo: list[int],
    outcomes: list[JobOutcome],
    settings: ExecutorSettings,
    log_dir: Path,
    progress: bool,
    job_name: str,
) -> None:
    cpus = settings.cpus_per_job
    context = _pool_context(fn)
    with (
        ProcessPoolExecutor(
            max_workers=min(settings.jobs, len(todo)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(cpus,),
        ) as pool,
        _progress_bar(len(todo), progress, job_name) as bar,
    ):
        futures = {}
        for i in todo:
            log = log_dir / f"{_safe(outcomes[i].name)}.log"
            outcomes[i].log = log
            job = pool.submit(_local_job, fn, items[i], cpus, str(log), dict(os.environ))
            futures[job] = i
        try:
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                i = futures[future]
                try:
                    _record(outcomes[i], future.result())
                except Exception as exc:  # the worker process died (killed, out of memory)
                    _record(outcomes[i], {"error": f"worker died: {_one_line(exc)}"})
                bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _pool_context(fn: Callable[..., Any]) -> Any:
    """A ``forkserver`` context whose server has imported ``fn``'s module (and so numpy, torch
    and the pipeline): every job forks from it in milliseconds instead of importing for seconds
    in a fresh interpreter. The server runs no torch op, so no thread pool is forked. Where
    forkserver is missing (not POSIX), ``spawn``."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    module = getattr(fn, "__module__", None)
    if module and module != "__main__":
        # only takes effect before the server starts (the first pool of this process)
        context.set_forkserver_preload([module])
    return context


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def slurm_parameters(settings: ExecutorSettings, n_jobs: int, job_name: str) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for ``settings`` (``slurm_set`` included)."""
    import submitit

    params: dict[str, Any] = {
        "timeout_min": settings.time_min,
        "cpus_per_task": settings.cpus_per_job,
        "name": job_name,
        "slurm_array_parallelism": settings.max_parallel or n_jobs,
    }
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.gpus:
        params["gpus_per_node"] = settings.gpus
    if settings.mem_gb is not None:
        params["mem_gb"] = settings.mem_gb
    known = submitit.SlurmExecutor._valid_parameters()
    extra: dict[str, str] = {}
    for key, value in settings.slurm_set.items():
        if key in known:
            params[f"slurm_{key}"] = value
        else:
            extra[key] = value
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def slurm_executor(settings: ExecutorSettings, log_dir: Path, n_jobs: int, job_name: str) -> Any:
    """A submitit Slurm executor with ``settings`` (one line if Slurm is not reachable)."""
    import shutil

    import submitit

    if shutil.which("sbatch") is None:
        raise UserInputError(
            "--executor slurm: sbatch is not on PATH; run on a Slurm login node or use "
            "--executor local"
        )
    executor = submitit.AutoExecutor(folder=str(log_dir / "%j"), cluster="slurm")
    executor.update_parameters(**slurm_parameters(settings, n_jobs, job_name))
    return executor


def _run_slurm(
    fn: Callable[..., Any],
    items: Sequence[tuple],
    todo: list[int],
    outcomes: list[JobOutcome],
    settings: ExecutorSettings,
    log_dir: Path,
    progress: bool,
    job_name: str,
) -> None:
    executor = slurm_executor(settings, log_dir, len(todo), job_name)
    cpus = settings.cpus_per_job
    jobs = executor.map_array(
        measured_call, [fn] * len(todo), [items[i] for i in todo], [cpus] * len(todo)
    )
    pending = dict(zip(todo, jobs, strict=True))
    for i, job in pending.items():
        outcomes[i].job_id = job.job_id
        outcomes[i].log = Path(job.paths.stderr)
    missing_since: dict[int, float] = {}
    try:
        with _progress_bar(len(pending), progress, f"{job_name} (slurm)") as bar:
            while pending:
                queued = _queued_ids([job.job_id for job in pending.values()])
                for i, job in list(pending.items()):
                    if not job.done():
                        if queued is None or job.job_id in queued:
                            missing_since.pop(i, None)
                            continue
                        # Not queued and no final state: without accounting (no slurmdbd)
                        # Slurm keeps no record of a job cancelled while pending.
                        first = missing_since.setdefault(i, time.monotonic())
                        if time.monotonic() - first < LOST_AFTER_S:
                            continue
                        _record(outcomes[i], {"error": LOST})
                    else:
                        try:
                            _record(outcomes[i], job.result())
                        except Exception as exc:  # failed, cancelled, timed out, node failure
                            _record(outcomes[i], {"error": _one_line(exc)})
                    del pending[i]
                    bar.update()
                if pending:
                    time.sleep(1.0)
    except BaseException:
        for job in pending.values():
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        raise


LOST_AFTER_S = 20.0  # a job out of the queue this long without any final state is lost
LOST = "CANCELLED or lost: the job left the Slurm queue without a result or a final state"


def _queued_ids(job_ids: list[str]) -> set[str] | None:
    """The ids (``ARRAY_TASK`` and plain) of these jobs still in Slurm's queue, or None when
    squeue cannot tell (then nothing is declared lost)."""
    import subprocess

    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return set() if "Invalid job id" in proc.stderr else None
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}
