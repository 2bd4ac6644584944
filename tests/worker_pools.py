"""Helpers of the Beam tests that run `pipelines.run` as a launcher subprocess and start worker pools.

A worker pool (`python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT`) is what a
cluster runs the Python SDK workers in; a job reaches it through an EXTERNAL environment. Each pool runs
in its own process group, so that stopping it ends the SDK workers it started too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# One way of picking distinct free loopback ports, shared with the standalone Spark cluster.
from pipelines.spark_standalone import free_ports

REPO = Path(__file__).resolve().parents[1]
POOL_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def subprocess_env() -> dict[str, str]:
    """The environment of every subprocess: the venv's `python` first on PATH, this checkout importable,
    nothing downloaded."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def children_of(pid: int) -> dict[int, str]:
    """The live child processes of `pid` and their command lines, from /proc (zombies left out: a pool
    keeps its finished worker as one)."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:  # the process ended while being read
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            found[int(stat.parent.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


@dataclass
class WorkerPool:
    """One `worker_pool_main` process, its own process group (its SDK workers included), and its log."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def started_workers(self) -> int:
        return self.log_text().count("Starting worker with command")

    def stop(self) -> None:
        """SIGTERM to the pool's process group, SIGKILL if the pool outlives it, then SIGKILL to whatever
        is left of the group (SDK workers); the pool is waited for."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            signal_group(self.process.pid, sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        signal_group(self.process.pid, signal.SIGKILL)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # every process of the group has ended
        os.killpg(pgid, sig)


def start_pools(count: int, base: Path) -> list[WorkerPool]:
    """Starts `count` worker pools on free loopback ports and waits until each accepts connections."""
    pools: list[WorkerPool] = []
    try:
        for index, port in enumerate(free_ports(count)):
            folder = base / f"pool{index}"
            folder.mkdir()
            log = folder / "pool.log"
            with log.open("wb") as handle:
                process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "apache_beam.runners.worker.worker_pool_main",
                        f"--service_port={port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    cwd=folder,  # the workers depend on no working directory
                    env=subprocess_env(),
                    start_new_session=True,  # its own process group: stop() ends its SDK workers too
                )
            pools.append(WorkerPool(port, process, log))
        for pool in pools:
            wait_until_listening(pool)
    except BaseException:
        for pool in pools:
            pool.stop()
        raise
    return pools


def wait_until_listening(pool: WorkerPool) -> None:
    deadline = time.monotonic() + POOL_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if pool.process.poll() is not None:
            pytest.fail(f"worker pool on port {pool.port} exited: {pool.log_text()[-2000:]}")
        try:
            with socket.create_connection(("localhost", pool.port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"worker pool on port {pool.port} not listening after {POOL_START_TIMEOUT_S} s")
