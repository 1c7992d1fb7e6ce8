"""A real one-node SLURM cluster on localhost for the tests: Debian's munged, slurmctld and slurmd,
run as children of the test in a private temporary folder (config, keys, sockets, state, logs, free
ports), and stopped afterwards, also when the test fails, with no daemon or job process left behind.

    with slurm_cluster(partitions=["cpu", "gpu"]) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)   # clients find it through SLURM_CONF

Only the process ids this module started, and processes carrying its private marker in their
environment (jobs inherit it through sbatch --export=ALL), are ever signalled.
"""
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ["munged", "slurmctld", "slurmd"]
CLIENTS = ["sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo"]
PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
MARKER = "CAMBENCH_SLURM_CLUSTER"  # environment variable naming the cluster's folder


def _which(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def missing_binaries():
    return [name for name in DAEMONS + CLIENTS if _which(name) is None]


def install_slurm():
    """apt-get install Debian's SLURM and munge (root, or sudo); daemons are not started."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True,
                   env=env, stdout=subprocess.DEVNULL)


def node_resources():
    """CPUs this process may use and the machine's memory in MB: what the one node offers."""
    cpus = len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return cpus, kb // 1024


def _free_ports(n):
    """n distinct ports free now (held open together, so the kernel cannot hand out one twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for every purpose here
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def marked_processes(folder):
    """Pids of live processes whose environment carries this cluster's marker (daemons, slurmstepd, jobs)."""
    tag = f"{MARKER}={folder}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if tag in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@dataclass
class Cluster:
    folder: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    partitions: list
    env: dict
    daemons: dict = field(default_factory=dict)  # name -> Popen

    def run(self, *args, check=True, timeout=60):
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr or out.stdout}"
                               f"\n{self.logs()}")
        return out.stdout

    def logs(self, chars=3000):
        text = []
        for log in sorted(self.folder.glob("*.log")):
            text.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(text)

    def jobs(self):
        """Every job slurmctld still records (MinJobAge keeps finished ones): id -> fields."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T|%P|%k")
        jobs = {}
        for line in out.splitlines():
            job_id, name, state, partition, comment = line.split("|", 4)
            jobs[job_id] = {"name": name, "state": state, "partition": partition, "comment": comment}
        return jobs

    def job(self, job_id):
        """`scontrol show job` as a dict of its key=value fields."""
        out = self.run("scontrol", "--oneliner", "show", "job", str(job_id))
        return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _write_config(cluster, ports, munge_socket):
    d = cluster.folder
    partitions = "\n".join(
        f"PartitionName={name} Nodes={cluster.node} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP"
        for i, name in enumerate(cluster.partitions))
    cluster.conf.write_text(f"""\
ClusterName=cambench
SlurmctldHost={cluster.node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser={_user()}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
NodeName={cluster.node} NodeAddr=127.0.0.1 CPUs={cluster.cpus} RealMemory={cluster.memory_mb} State=UNKNOWN
{partitions}
""")


def _user():
    return pwd.getpwuid(os.geteuid()).pw_name


def _srun_shim(cluster):
    """An `srun` first on the PATH that puts SLURM_CONF back. The plugin's job step
    (snakemake-executor-plugin-slurm-jobstep 0.6.1) removes every SLURM_* variable, SLURM_CONF
    included, from the environment of the srun it starts inside the job; a cluster whose slurm.conf
    is not at the compiled-in /etc/slurm/slurm.conf (this one) then fails with "Could not establish
    a configuration source"."""
    shim = cluster.folder / "bin" / "srun"
    shim.write_text(f'#!/bin/sh\nexport SLURM_CONF="${{SLURM_CONF:-{cluster.conf}}}"\nexec {_which("srun")} "$@"\n')
    shim.chmod(0o700)
    cluster.env["PATH"] = f"{shim.parent}{os.pathsep}{cluster.env.get('PATH', os.defpath)}"


def _wait(what, test, timeout, cluster, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the daemon exited with code {proc.returncode}\n{cluster.logs()}")
        try:
            if test():
                return
        except (OSError, RuntimeError, subprocess.SubprocessError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not ready after {timeout} s\n{cluster.logs()}")


def _start(cluster, name, args):
    out = open(cluster.folder / f"{name}.stdout.log", "w")
    proc = subprocess.Popen([_which(name), *args], env=cluster.env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    cluster.daemons[name] = proc
    return proc


def _stop(cluster, timeout=30):
    """Cancel every job, shut slurmctld and slurmd down, then munged; signal what remains, only ours."""
    if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
        with contextlib.suppress(Exception):
            cluster.run("scancel", f"--user={_user()}", check=False, timeout=20)
            deadline = time.time() + timeout
            while time.time() < deadline and any(j["state"] in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")
                                                 for j in cluster.jobs().values()):
                time.sleep(0.3)
        with contextlib.suppress(Exception):
            cluster.run("scontrol", "shutdown", check=False, timeout=20)
    for name in ("slurmd", "slurmctld", "munged"):  # the order matters: munged last, slurmctld needs it
        proc = cluster.daemons.get(name)
        if proc is None:
            continue
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # slurmstepd and job processes outlive slurmd by design; anything still carrying the marker goes.
    deadline = time.time() + 10
    while (left := marked_processes(cluster.folder)) and time.time() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@contextlib.contextmanager
def slurm_cluster(partitions=("debug",), base=None):
    """Start munged, slurmctld and slurmd for one node named like this host, with the given
    partitions (the first is the default), all on that node; yield a Cluster; stop everything."""
    cpus, memory_mb = node_resources()
    folder = Path(tempfile.mkdtemp(prefix="slurm-", dir=base))  # short: a socket path has <108 bytes
    os.chmod(folder, 0o700)
    conf = folder / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf), MARKER: str(folder)}
    for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_")) and v != "SLURM_CONF"]:
        del env[var]  # a test run from inside a SLURM job must not talk to that job's cluster
    node = socket.gethostname().split(".")[0]
    cluster = Cluster(folder, conf, node, cpus, memory_mb, list(partitions), env)
    try:
        for sub in ("state", "spool", "munge", "bin"):
            (folder / sub).mkdir(mode=0o700)
        _srun_shim(cluster)
        munge_socket = folder / "munge" / "munge.socket"
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        munged = _start(cluster, "munged", ["--foreground", "--force", f"--socket={munge_socket}",
                                            f"--key-file={key}", f"--pid-file={folder}/munge/munged.pid",
                                            f"--log-file={folder}/munged.log",
                                            f"--seed-file={folder}/munge/munged.seed"])
        _wait("munged", munge_socket.exists, 20, cluster, munged)
        _write_config(cluster, _free_ports(2), munge_socket)
        ctld = _start(cluster, "slurmctld", ["-D", "-i", "-f", str(conf)])
        _wait("slurmctld", lambda: "UP" in cluster.run("scontrol", "ping", check=False, timeout=10), 60,
              cluster, ctld)
        slurmd = _start(cluster, "slurmd", ["-D", "-f", str(conf), "-N", node])
        _wait("slurmd", lambda: cluster.run("sinfo", "--noheader", "--format=%T", "--nodes", node, timeout=10)
              .split()[0].rstrip("*~#") in ("idle", "mixed", "allocated"), 60, cluster, slurmd)
        yield cluster
    finally:
        try:
            _stop(cluster)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
