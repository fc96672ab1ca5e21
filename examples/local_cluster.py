"""Starts N worker processes on this machine as a tf.distribute cluster on 127.0.0.1 ports.

Each worker gets its own ``TF_CONFIG`` (the same cluster of loopback
addresses, its own task index), exactly as each host of a real cluster gets
one. The processes are bounded in time and always ended, each by its own PID.
Only the standard library is used, so the launcher starts at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time


def free_loopback_ports(count: int) -> list:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def tf_config(ports: list, index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of loopback workers."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def run_workers(count: int, command, *, timeout: float, log_dir: str, env: dict | None = None) -> list:
    """Runs ``command(index)`` (an argv list) in ``count`` processes with their TF_CONFIG; returns exit codes.

    Each worker's output goes to ``log_dir/worker_{index}.log``; ``env`` (default:
    this process's environment) is the base of each worker's environment. A worker
    still running after ``timeout`` seconds, or left when another fails or
    this function is interrupted, is terminated (then killed) by its PID.
    """
    os.makedirs(log_dir, exist_ok=True)
    ports = free_loopback_ports(count)
    processes, logs = [], []
    try:
        for index in range(count):
            worker_env = dict(os.environ if env is None else env, TF_CONFIG=tf_config(ports, index),
                              TF_CPP_MIN_LOG_LEVEL="2")
            log = open(os.path.join(log_dir, f"worker_{index}.log"), "w")
            logs.append(log)
            processes.append(subprocess.Popen(command(index), env=worker_env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if all(code is not None for code in codes) or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.2)
        return [process.poll() for process in processes]
    finally:
        for process in processes:
            end(process)
        for log in logs:
            log.close()


def end(process: subprocess.Popen) -> None:
    """Ends a worker by its PID: SIGTERM, then SIGKILL if it has not gone within 5 s."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def python_command(script: str, *args: str):
    """``command(index)`` for :func:`run_workers`: this Python running ``script`` with ``--worker_index``."""
    return lambda index: [sys.executable, script, *args, f"--worker_index={index}"]
