"""``python -m tfft.launch --num_workers=2 -- <tfft.train flags>``: N local workers, one cluster.

Starts ``--num_workers`` copies of ``python -m tfft.train <flags> --strategy=multi_worker``
concurrently, each with the standard ``TF_CONFIG`` naming free 127.0.0.1 ports, so
MultiWorkerMirroredStrategy can be tried without a cluster. Worker 0 is the chief: it alone
writes ``--workdir`` (the others train in temporary directories they remove); the same command
after a crash resumes the run from the chief's checkpoints, on every worker. Output is streamed
line by line with a ``[worker i]`` prefix. The first worker that fails stops the others (they
would wait forever in collective ops); the launcher then exits with that worker's status, and
with 124 when ``--timeout_s`` passes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import TextIO

from absl import flags

from tfft import cli
from tfft.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 2, "How many local workers to start.", lower_bound=1)
flags.DEFINE_integer("timeout_s", 3600, "Stop every worker after this many seconds.",
                     lower_bound=1)

EXIT_TIMEOUT = 124


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 (held open together so none is returned twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(ports: list[int]) -> list[str]:
    """The ``TF_CONFIG`` of each worker of a local cluster; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(len(ports))]


def train_command(train_args: list[str]) -> list[str]:
    """``python -m tfft.train`` with the user's flags and the multi-worker strategy last (wins)."""
    for arg in train_args:
        if arg.startswith("--strategy=") and arg != "--strategy=multi_worker":
            raise UserError(f"--strategy: tfft.launch runs --strategy=multi_worker; "
                            f"received {arg!r}.")
    return [sys.executable, "-m", "tfft.train", *train_args, "--strategy=multi_worker"]


def run_workers(commands: list[list[str]], timeout_s: float, out: TextIO | None = None,
                env: dict[str, str] | None = None) -> tuple[int, int | None]:
    """Runs ``commands[i]`` as worker ``i`` of a fresh local cluster, all at once.

    Returns ``(status, failed_worker)``: 0 and None when all succeed; otherwise the status of
    the first worker that failed (or ``EXIT_TIMEOUT``) and its index (None on timeout).
    """
    out = out or sys.stdout
    lock = threading.Lock()
    procs, readers = [], []
    for i, (command, tf_config) in enumerate(
            zip(commands, tf_configs(free_ports(len(commands))), strict=True)):
        worker_env = {**os.environ, **(env or {}), "TF_CONFIG": tf_config,
                      "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(command, env=worker_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        procs.append(proc)
        readers.append(threading.Thread(target=_stream, args=(proc.stdout, f"[worker {i}] ",
                                                              out, lock), daemon=True))
        readers[-1].start()
    try:
        status, failed = _wait(procs, time.monotonic() + timeout_s)
    finally:
        _stop(procs)
        for reader in readers:
            reader.join(timeout=5)
    return status, failed


def _stream(pipe: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in pipe:
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()


def _wait(procs: list[subprocess.Popen], deadline: float) -> tuple[int, int | None]:
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        for i, code in enumerate(codes):
            if code:
                return (code if code > 0 else 1), i
        if all(code == 0 for code in codes):
            return 0, None
        time.sleep(0.2)
    return EXIT_TIMEOUT, None


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminates workers still running (a failed peer leaves them blocked), then kills."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_args(argv: list[str]) -> list[str]:
    """Everything after ``--``: the ``tfft.train`` flags passed to every worker unchanged."""
    return argv[argv.index("--") + 1:] if "--" in argv else []


def parse_flags(argv: list[str]) -> list[str]:
    """The launcher's own flags come before ``--`` (``main`` reads the rest from sys.argv)."""
    return cli.parse_flags(argv[:argv.index("--")] if "--" in argv else argv)


def main() -> None:
    commands = [train_command(worker_args(sys.argv))] * FLAGS.num_workers
    status, failed = run_workers(commands, FLAGS.timeout_s)
    if status == EXIT_TIMEOUT and failed is None:
        cli.fail(f"--timeout_s: the workers did not finish within {FLAGS.timeout_s} s; "
                 "stopped them all.", EXIT_TIMEOUT)
    if status:
        cli.fail(f"worker {failed} exited with status {status}; stopped the others "
                 "(its own error is above).", status)


if __name__ == "__main__":
    cli.run(main, parser=parse_flags)
