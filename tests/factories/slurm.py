"""`start_cluster`: a real single-node Slurm cluster (munged, slurmctld, slurmd) for the tests.

Everything lives under one work directory: ``slurm.conf``, an empty ``plugstack.conf`` (no
cgroup plugin, so no ``cgroup.conf``), the munge key and socket, state, spool, logs and PID
files. Nothing under /etc/slurm or /etc/munge is read or written, and the ports are picked
free, so two sessions on one machine do not collide. The daemons run in the foreground as children of the test process
(``-D`` / ``--foreground``); `SlurmCluster.stop` ends each one by its PID.

Needs root (``SlurmUser=root``: jobs run as root) and Debian's ``slurm-wlm`` and ``munge``
packages (22.05 on Debian 12).

What job-state queries need (found with Slurm 22.05 and submitit 1.5): submitit knows a job is
done from its result pickle; for a job that wrote none (cancelled, killed by Slurm) it waits
for ``sacct -o JobID,State,NodeList --parsable2 -j ID`` to print a final state, and waits
forever while that prints nothing. Without slurmdbd (which needs MySQL/MariaDB) plain ``sacct``
only says "Slurm accounting storage is disabled". What works without a database: Slurm's
job-completion log (``JobCompType=jobcomp/filetxt``), which real ``sacct --completion`` reads,
with the same columns and states (COMPLETED, FAILED, CANCELLED, ...). Two gaps remain: a job
shows there only once it has ended or been cancelled (submitit reads "no line" as not finished
yet, which is right), and that reader drops the array fields ("Unknown type ArrayJobId"), so
array tasks show under their raw job ids (``4``) where submitit asks for ``-j 2`` and looks up
``2_1``. So the cluster puts a ``sacct`` first on ``PATH`` (in `SlurmCluster.env`) that runs
the real ``sacct --completion`` and, for ``--parsable2`` listings, relabels array tasks as
``ARRAYID_TASK`` from the log and filters ``-j`` itself (an array id selects its tasks); any
other use goes straight to ``sacct --completion``.

Timing: ``batch_sched_delay=0`` starts a batch job about 1 s after ``sbatch`` (3 s by
default; the first job after start-up waits ~2.5 s either way). A cancelled submitit job holds
its CPU, COMPLETING, for ~7 s (``KillWait=2``, then its step's last message to the killed
``srun`` times out); `SlurmCluster.stop` cancels leftover jobs and waits for them.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PARTITION = "debug"
TOOLS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "sacct")
REAL_SACCT, JOBCOMP = "MINDZOO_TEST_REAL_SACCT", "MINDZOO_TEST_JOBCOMP"  # for the sacct wrapper


class SlurmClusterError(RuntimeError):
    """A Slurm or munge daemon did not come up; the message holds the tail of its log."""


@dataclass
class SlurmCluster:
    """A running single-node cluster: its config, its client environment and its daemons."""

    workdir: Path
    conf: Path
    log_dir: Path
    node: str
    partition: str
    cpus: int
    real_memory_mb: int
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a Slurm client command (``sinfo``, ``squeue``, ...) against this cluster; stdout."""
        proc = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
        return proc.stdout

    def stop(self, job_grace: float = 20) -> None:
        """Cancel the cluster's jobs, then stop every daemon it started by PID, newest first.

        Jobs first: their slurmstepd processes outlive slurmd. Waits up to `job_grace` seconds
        for them to end; never raises for a daemon that is gone already.
        """
        ctld = self.processes.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            try:
                self.run("scancel", "--user=root", check=False, timeout=10)
                deadline = time.monotonic() + job_grace
                while self.run("squeue", "-h", "-o", "%A", check=False, timeout=10).strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.25)
            except (OSError, subprocess.SubprocessError):
                pass
        for name, proc in reversed(list(self.processes.items())):
            _stop_process(proc)
            self.processes.pop(name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last `lines` lines of daemon `name`'s log ('' when it wrote none)."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def slurm_available() -> str | None:
    """Why a cluster cannot start here (a sentence), or None when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"Slurm/munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test Slurm cluster runs its daemons and jobs as root; not running as root"
    return None


def start_cluster(workdir: Path, timeout: float = 60) -> SlurmCluster:
    """Write a config under `workdir`, start munged, slurmctld and slurmd; wait for an idle node.

    Returns the running `SlurmCluster`; on failure stops what it started and raises
    `SlurmClusterError` with the tail of the failing daemon's log.
    """
    workdir = Path(workdir).resolve()
    dirs = {name: workdir / name for name in ("munge", "state", "spool", "log", "run", "bin")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)  # munged: its socket's directory searchable by all, writable by none
    workdir.chmod(0o755)
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    real_memory = _real_memory_mb()
    munge_socket = dirs["munge"] / "munge.socket"
    conf = workdir / "slurm.conf"
    ctld_port, slurmd_port = _free_ports(2)
    _write_configs(workdir, dirs, node, cpus, real_memory, munge_socket, ctld_port, slurmd_port)
    _write_sacct(dirs["bin"] / "sacct", dirs["log"] / "jobcomp.txt")
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        "PATH": f"{dirs['bin']}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cluster = SlurmCluster(
        workdir, conf, dirs["log"], node, PARTITION, cpus, real_memory, env, processes={}
    )
    try:
        _start_munged(cluster, dirs, munge_socket, timeout)
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-f", str(conf)])
        _wait(
            cluster,
            "slurmctld",
            lambda: "is UP" in cluster.run("scontrol", "ping", check=False),
            timeout,
        )
        _start(cluster, "slurmd", ["slurmd", "-D", "-f", str(conf), "-N", node])
        _wait(cluster, "slurmd", lambda: _node_idle(cluster), timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _write_configs(
    workdir: Path,
    dirs: dict[str, Path],
    node: str,
    cpus: int,
    real_memory: int,
    munge_socket: Path,
    ctld_port: int,
    slurmd_port: int,
) -> None:
    """Write slurm.conf and an empty plugstack.conf (no cgroup plugin: no cgroup.conf)."""
    log, run = dirs["log"], dirs["run"]
    settings = {
        "ClusterName": "mindzoo-test",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket}",
        "StateSaveLocation": dirs["state"],
        "SlurmdSpoolDir": dirs["spool"],
        "SlurmctldPidFile": run / "slurmctld.pid",
        "SlurmdPidFile": run / "slurmd.pid",
        "SlurmctldLogFile": log / "slurmctld.log",
        "SlurmdLogFile": log / "slurmd.log",
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        "PlugStackConfig": workdir / "plugstack.conf",
        "MpiDefault": "none",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SwitchType": "switch/none",
        "SchedulerType": "sched/backfill",
        # Schedule a batch job within ~1 s of its submission, not up to 3 s (the default).
        "SchedulerParameters": "batch_sched_delay=0",
        "SelectType": "select/cons_tres",
        # Schedule CPUs (not cores): two one-CPU jobs share a node even where a core has two threads.
        "SelectTypeParameters": "CR_CPU_Memory",
        "SlurmdParameters": "config_overrides",  # the node as written here, never drained as "low"
        "ReturnToService": 2,
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": log / "jobcomp.txt",
        "MailProg": "/bin/true",
        "DefMemPerCPU": min(1024, real_memory // cpus),  # a job without --mem: not all of it
        "KillWait": 2,
        "InactiveLimit": 0,
        "MinJobAge": 300,
        "SlurmctldTimeout": 30,
        "SlurmdTimeout": 60,
        "MessageTimeout": 20,
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines.append(
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory} State=UNKNOWN"
    )
    lines.append(f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP")
    (workdir / "slurm.conf").write_text("\n".join(lines) + "\n")
    (workdir / "plugstack.conf").write_text("")


def _write_sacct(path: Path, jobcomp: Path) -> None:
    """Write the `sacct` wrapper (see the module docstring) that reads `jobcomp`."""
    real, log = shlex.quote(shutil.which("sacct") or "sacct"), shlex.quote(str(jobcomp))
    python, script = shlex.quote(sys.executable), shlex.quote(str(Path(__file__).resolve()))
    path.write_text(
        f"#!/bin/sh\nexport {REAL_SACCT}={real} {JOBCOMP}={log}\n"
        f'exec {python} {script} sacct "$@"\n'
    )
    path.chmod(0o755)


def sacct_from_jobcomp(argv: list[str]) -> int:
    """`sacct ARGV` on the job-completion log, array tasks as ``ID_TASK``; returns the status.

    Handles ``-o/--format``, ``-j/--jobs``, ``-P/--parsable2`` and ``-n/--noheader``; any other
    argument (or no ``--parsable2``/``--format``) runs the real ``sacct --completion ARGV``.
    """
    real, jobcomp = os.environ[REAL_SACCT], Path(os.environ[JOBCOMP])
    fields, jobs, header, parsable, other = "", set(), True, False, False
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "--format"):
            fields = next(args, "")
        elif arg.startswith("--format="):
            fields = arg.split("=", 1)[1]
        elif arg in ("-j", "--jobs"):
            jobs.update(next(args, "").split(","))
        elif arg.startswith("--jobs="):
            jobs.update(arg.split("=", 1)[1].split(","))
        elif arg in ("-P", "--parsable2"):
            parsable = True
        elif arg in ("-n", "--noheader"):
            header = False
        else:
            other = True
    if other or not parsable or not fields:
        os.execv(real, [real, "--completion", *argv])
    cmd = [real, "--completion", "--parsable2", "-S", "2000-01-01", "-o", "JobIDRaw," + fields]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    array_ids = _array_task_ids(jobcomp)
    live = _queued_states()
    names = [name.split("%")[0].strip().lower() for name in fields.split(",")]
    lines = proc.stdout.splitlines()
    if header and lines:
        print(lines[0].split("|", 1)[-1])
    for line in lines[1:]:
        raw, *values = line.split("|")
        job_id = array_ids.get(raw, raw)
        if jobs and not {raw, job_id, job_id.split("_")[0]} & jobs:
            continue
        values = [
            job_id if name == "jobid" else value for name, value in zip(names, values, strict=False)
        ]
        if job_id in live and "state" in names:
            # A requeued job's first run is in the completion log (FAILED or REQUEUED) while the
            # job waits or runs again; accounting would show its newest state, so does this.
            values[names.index("state")] = live[job_id]
        print("|".join(values))
    return 0


def _queued_states() -> dict[str, str]:
    """{job id ("ID" or "ARRAYID_TASK"): state} of the jobs in the queue now."""
    proc = subprocess.run(
        ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {}
    return dict(line.split("|", 1) for line in proc.stdout.splitlines() if "|" in line)


def _array_task_ids(jobcomp: Path) -> dict[str, str]:
    """{raw job id: "ARRAYID_TASK"} for the array tasks in the job-completion log."""
    if not jobcomp.exists():
        return {}
    pattern = re.compile(r"^JobId=(\d+) .* ArrayJobId=(\d+) ArrayTaskId=(\d+) ")
    matches = (pattern.match(line) for line in jobcomp.read_text(errors="replace").splitlines())
    return {m[1]: f"{m[2]}_{m[3]}" for m in matches if m}


def _start_munged(cluster: SlurmCluster, dirs: dict[str, Path], sock: Path, timeout: float) -> None:
    """Create a fresh munge key and start munged on its own socket under `dirs['munge']`."""
    key = dirs["munge"] / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    # --force: munged wants every directory above its socket searchable by all users, and
    # pytest's temporary directories are 0700; only root uses this socket, so that is moot.
    cmd = ["munged", "--foreground", "--force", f"--socket={sock}", f"--key-file={key}"]
    cmd += [f"--pid-file={dirs['run'] / 'munged.pid'}", f"--seed-file={dirs['munge'] / 'seed'}"]
    cmd += [f"--log-file={cluster.log_dir / 'munged.log'}"]
    _start(cluster, "munged", cmd)

    def munge_works() -> bool:
        """Whether a credential encodes and decodes through the new socket."""
        enc = subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True, timeout=10)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge", "-S", str(sock)], input=enc.stdout, capture_output=True)
        return dec.returncode == 0

    _wait(cluster, "munged", munge_works, timeout)


def _start(cluster: SlurmCluster, name: str, cmd: list[str]) -> None:
    """Start daemon `name` in the foreground as a child; its output goes to LOG_DIR/NAME.out."""
    out = open(cluster.log_dir / f"{name}.out", "wb")  # noqa: SIM115 - the child keeps it open
    try:
        cluster.processes[name] = subprocess.Popen(
            cmd,
            env=cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    finally:
        out.close()


def _wait(cluster: SlurmCluster, name: str, ready: Callable[[], object], timeout: float) -> None:
    """Poll `ready()` until truthy; raise `SlurmClusterError` if `name` exits or time runs out."""
    proc = cluster.processes[name]
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            problem = f"{name} exited with status {proc.returncode}"
            break
        try:
            if ready():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        if time.monotonic() > deadline:
            problem = f"{name} not ready after {timeout:.0f} s"
            break
        time.sleep(0.25)
    out = cluster.log_dir / f"{name}.out"
    output = out.read_text(errors="replace")[-3000:] if out.exists() else ""
    raise SlurmClusterError(
        f"{problem}.\n--- {cluster.log_dir / (name + '.log')} (tail) ---\n{cluster.log_tail(name)}"
        f"\n--- {out} (tail) ---\n{output}\n--- sinfo ---\n"
        f"{cluster.run('sinfo', '-N', '-l', check=False) if name == 'slurmd' else ''}"
    )


def _die_with_parent() -> None:
    """In a daemon's child process: get SIGTERM if the test process dies without `stop`.

    (Linux sends it when the thread that started the daemon ends: start clusters from the
    main thread, as pytest fixtures do.)
    """
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _node_idle(cluster: SlurmCluster) -> bool:
    """Whether sinfo reports the node idle (registered and free)."""
    state = cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t", check=False).strip()
    return state == "idle"


def _stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM `proc` (by its PID), then SIGKILL it if it outlives `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


def _real_memory_mb() -> int:
    """MemTotal from /proc/meminfo in MiB, less 10 % (and 512 MiB) left for the system."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) // 1024
            return max(1024, min(int(total * 0.9), total - 512))
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that are free on this machine right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


if __name__ == "__main__" and sys.argv[1:2] == ["sacct"]:  # the wrapper written by _write_sacct
    sys.exit(sacct_from_jobcomp(sys.argv[2:]))
