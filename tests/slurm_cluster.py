"""A throwaway SLURM cluster on this machine for the tests: one node (slurmctld + slurmd on localhost), or
several nodes, each a `slurmd -N NAME` in its own UTS and mount namespace (its own hostname, its own /dev/shm, an
/etc/hosts that resolves every node name to 127.0.0.1), all on the loopback address, each on its own port.

Everything lives under one folder: slurm.conf, state, spool, logs. No munge (auth/none), no accounting
database (job state comes from `scontrol show job`, kept for MinJobAge seconds after the job ends). The daemons
are stopped by pid; the namespaces, their mounts and their /dev/shm go with their last process.
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "squeue")


def missing_programs(nodes: int = 1) -> list[str]:
    return [p for p in DAEMONS + CLIENTS + (("unshare", "srun") if nodes > 1 else ()) if shutil.which(p) is None]


def _port(preferred: int) -> int:
    """`preferred` if nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free TCP port")


def _node_line() -> str:
    """This machine's NodeName line, as `slurmd -C` measures it (at least 2 CPUs: the tests run 2-process DDP)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    cpus = max(int(fields["CPUs"]), 2)
    memory = min(int(fields.get("RealMemory", 1024)), 8192)
    return (f"NodeName={fields['NodeName']} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN\n"
            f"PartitionName=debug Nodes={fields['NodeName']} Default=YES MaxTime=INFINITE State=UP")


def _nodes_lines(names: list[str], cpus: int) -> str:
    """One NodeName line per node: all at 127.0.0.1, each slurmd on its own port."""
    lines = [f"NodeName={n} NodeAddr=127.0.0.1 Port={_port(6930 + i)} CPUs={cpus} RealMemory=4096 State=UNKNOWN"
             for i, n in enumerate(names)]
    return "\n".join(lines + [f"PartitionName=debug Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP"])


class LocalSlurm:
    def __init__(self, root: Path, nodes: list[str] | None = None, cpus_per_node: int = 1):
        """nodes: names of the nodes of a multi-node cluster (each in its own namespaces); None: one real node."""
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.nodes, self.cpus_per_node = nodes, cpus_per_node
        self.procs: list[subprocess.Popen] = []

    def env(self, **extra) -> dict:
        """The caller's environment pointed at this cluster, without SLURM settings from any outer job."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        return {**env, "SLURM_CONF": str(self.conf), **extra}

    def start(self, timeout_s: float = 60) -> None:
        r = self.root
        for sub in ("state", "spool", *(f"spool/{n}" for n in self.nodes or ())):
            (r / sub).mkdir(parents=True, exist_ok=True)
        (r / "plugstack.conf").write_text("")  # keep the system's SPANK plugins out
        node = "-%n" if self.nodes else ""  # one spool, pid and log file per node
        self.conf.write_text(f"""\
ClusterName=mnistdisttest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_port(6917)}
SlurmdPort={_port(6918)}
SlurmUser={getpass.getuser()}
SlurmdUser={getpass.getuser()}
AuthType=auth/none
CredType=cred/none
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool{"/%n" if self.nodes else ""}
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd{node}.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd{node}.log
PlugStackConfig={r}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
# Finished jobs stay visible to `scontrol show job` for 10 minutes; that is the only record without slurmdbd.
MinJobAge=600
KillWait=15
{_nodes_lines(self.nodes, self.cpus_per_node) if self.nodes else _node_line()}
""")
        for daemon in DAEMONS if not self.nodes else ("slurmctld",):
            log = open(r / f"{daemon}.out", "w")
            self.procs.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)] + (["-c"] if daemon == "slurmctld" else []),
                                               stdout=log, stderr=subprocess.STDOUT, env=self.env()))
        if self.nodes:
            hosts = r / "hosts"  # every node name (and this machine's) on the loopback address
            hosts.write_text(f"127.0.0.1 localhost {socket.gethostname()} {' '.join(self.nodes)}\n")
            for name in self.nodes:
                # Its own hostname, its own empty /dev/shm, the hosts file; then slurmd as that node.
                inside = (f"hostname {name} && mount -t tmpfs -o size=256m tmpfs /dev/shm && "
                          f"mount --bind {hosts} /etc/hosts && exec slurmd -D -N {name} -f {self.conf}")
                self.procs.append(subprocess.Popen(
                    ["unshare", "--uts", "--mount", "--propagation", "private", "--fork", "sh", "-c", inside],
                    stdout=open(r / f"slurmd-{name}.out", "w"), stderr=subprocess.STDOUT, env=self.env()))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; see {r}/{p.args[0]}.log and .out")
            node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, env=self.env())
            if len(re.findall(r"State=IDLE", node.stdout)) == len(self.nodes or [None]):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the local SLURM node did not become IDLE in {timeout_s:.0f}s; see {r}/slurmd.log")

    def stop(self) -> None:
        """Stop the daemons we started (by pid; running jobs are cancelled first)."""
        subprocess.run(["scancel", "--full", "--user", str(os.getuid())], capture_output=True, env=self.env())
        for name in self.nodes or ():  # the slurmd inside each namespace, by the pid it wrote
            try:
                os.kill(int((self.root / f"slurmd-{name}.pid").read_text()), 15)
            except (OSError, ValueError):
                pass
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        # slurmstepd processes of a job killed late can outlive slurmd for a moment; they exit by themselves.

    # ------------------------------------------------------------------ clients

    def run(self, *args: str, check: bool = True, env: dict | None = None) -> str:
        p = subprocess.run(args, capture_output=True, text=True, env=env or self.env())
        if check and p.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def sbatch(self, script: str, *args: str, cwd: Path, env: dict, options: list[str] = ()) -> str:
        """`sbatch options... script args...` from `cwd`; returns the job id."""
        p = subprocess.run(["sbatch", "--parsable", *options, script, *args], cwd=cwd, capture_output=True,
                           text=True, env=self.env(**env))
        if p.returncode:
            raise RuntimeError(f"sbatch failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, StdOut, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for(self, job_id: str, states: set[str], timeout_s: float, what: str = "") -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout_s:.0f}s {what}: {info}")
            time.sleep(0.5)
