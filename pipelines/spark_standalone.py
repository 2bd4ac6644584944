"""A Spark standalone cluster on this machine, from the installed pyspark: a master and N workers.

    start_cluster(workers=2) -> master JVM + worker JVMs (each its own process group) -> the master's
    JSON status says every worker is ALIVE -> `spark://127.0.0.1:PORT` -> stop(): workers, then master

Spark's own deployment classes (`org.apache.spark.deploy.master.Master`, `...deploy.worker.Worker`),
started through `bin/spark-class` of the pyspark package, which ships a complete Spark: nothing is
downloaded. Each worker launches its executors as separate JVMs with their own Python workers, so a job
against it sees what it sees on a real cluster: separate processes per executor, an executor that dies
and a task that Spark retries elsewhere, executors whose Python is not the driver's.

Used by the cluster tests and `docqa bench --modes spark-cluster`; the README's recipe runs the same
commands by hand. Every process started here is stopped by its process group, executors included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from qa_core.errors import JobError

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"


def spark_home() -> Path:
    """The installed pyspark's folder, which is a complete Spark (`bin/spark-class`, `jars/`)."""
    import pyspark  # the driver's pyspark: only the command that starts a cluster needs it

    return Path(pyspark.__file__).resolve().parent


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that are free now (the sockets are held together: no port twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class StandaloneCluster:
    """A running master and its workers.

    Attributes:
        master_url: `spark://127.0.0.1:PORT`, what `--master` takes.
        web_url: The master's web UI (`/json/` is its status as JSON).
        master: The master's JVM.
        workers: The workers' JVMs, in start order.
        log_dir: Where each JVM's output goes (`master.log`, `worker-K.log`).
    """

    master_url: str
    web_url: str
    master: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path = Path(".")

    def status(self) -> dict[str, object]:
        """The master's status document (workers, their state and cores, applications)."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as response:
            document: dict[str, object] = json.load(response)
        return document

    def alive_workers(self) -> int:
        """Workers the master counts as ALIVE."""
        workers = self.status().get("workers", [])
        listed = workers if isinstance(workers, list) else []
        return sum(1 for w in listed if isinstance(w, dict) and w.get("state") == "ALIVE")

    def executor_pids(self) -> list[int]:
        """The process ids of the executor JVMs now running (children of this cluster's workers)."""
        worker_pids = {w.pid for w in self.workers}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # the process ended while being read
            if EXECUTOR_CLASS.encode() in command and parent in worker_pids:
                found.append(int(entry.name))
        return sorted(found)

    def stop(self, grace: float = 10.0) -> None:
        """Stops the workers (their executors with them) and the master.

        SIGTERM to every process group at once, SIGKILL to what is left after `grace` seconds.
        """
        processes = [*self.workers, self.master]
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in processes:  # what is left, and whatever the groups left (executors, Python workers)
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(process.pid, signum)


def _spark_class(
    main_class: str, arguments: list[str], log: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """One JVM of `main_class` through `bin/spark-class` (which execs java: the pid is the JVM's)."""
    command = [str(spark_home() / "bin" / "spark-class"), main_class, *arguments]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
        )


@contextmanager
def standalone_cluster(
    workdir: Path,
    *,
    workers: int = 2,
    cores: int = 1,
    memory: str = "4g",
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    distinct_hosts: bool = False,
) -> Iterator[StandaloneCluster]:
    """Starts a master and `workers` workers on loopback, yields the cluster once all are ALIVE, stops it.

    Args:
        workdir: Logs (`logs/`) and the workers' application folders (`work-K/`) go here.
        workers: Worker JVMs, each offering `cores` cores and `memory` to executors.
        cores: Cores per worker (one executor per worker per application, with that many task slots).
        memory: Memory per worker, in Spark's notation.
        env: The JVMs' environment (default: this process's); `SPARK_HOME` and loopback are set here.
        timeout: Seconds to wait for every worker to register.
        distinct_hosts: Worker K (and its executors) on loopback address 127.0.0.K+2 instead of
            127.0.0.1: Spark runs a speculative copy of a task only on another host than the original's,
            so speculation needs workers that Spark sees as separate machines.

    Raises:
        JobError: A JVM exits during start-up, or the workers do not register in time (the logs are
            named).
    """
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ if env is None else env)
    environment.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1")
    environment.setdefault("SPARK_NO_DAEMONIZE", "1")
    port, web_port = free_ports(2)
    master = _spark_class(
        MASTER_CLASS,
        ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(web_port)],
        log_dir / "master.log",
        environment,
    )
    cluster = StandaloneCluster(
        f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{web_port}", master, log_dir=log_dir
    )
    try:
        # The master's ports are bound before any worker starts, so no worker's port can take them.
        _wait_for_workers(cluster, 0, timeout)
        for k in range(workers):
            host = f"127.0.0.{k + 2}" if distinct_hosts else "127.0.0.1"
            arguments = [
                "--host", host, "--cores", str(cores), "--memory", memory,
                "--webui-port", "0", "--work-dir", str(workdir / f"work-{k}"),
                cluster.master_url,
            ]  # fmt: skip
            worker_env = {**environment, "SPARK_LOCAL_IP": host}  # its executors bind there too
            cluster.workers.append(
                _spark_class(WORKER_CLASS, arguments, log_dir / f"worker-{k}.log", worker_env)
            )
        _wait_for_workers(cluster, workers, timeout)
        yield cluster
    finally:
        cluster.stop()


def _wait_for_workers(cluster: StandaloneCluster, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, process in [("master", cluster.master)] + [
            (f"worker-{k}", w) for k, w in enumerate(cluster.workers)
        ]:
            if process.poll() is not None:
                log = cluster.log_dir / f"{name}.log"
                raise JobError(f"the Spark {name} exited with code {process.returncode}: see {log}")
        try:
            if cluster.alive_workers() >= expected:
                return
        except (OSError, ValueError):
            pass  # the master's web UI is not up yet (or answers with a page that is not its status)
        if time.monotonic() > deadline:
            waited = (
                f"{expected} Spark workers did not register" if expected else "the Spark master did not start"
            )
            raise JobError(f"{waited} within {timeout:.0f} s: see {cluster.log_dir}")
        time.sleep(0.5)
