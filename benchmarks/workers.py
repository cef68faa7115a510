"""The protocol between `make bench`'s driver and its long-lived measuring workers.

Ours (TensorFlow, the project's venv) and the peer (PyTorch, benchmarks/.venv-peer) are
different Pythons, so each runs as a worker subprocess that builds its variants once and
then, round after round, is told "time N steps of variant X now"; the driver
(benchmarks/bench_peer.py) alternates between them, so both see the same drifts of a
shared machine. Standard library only: both interpreters import this file.

One JSON object per line. The driver sends {"op": ..., ...}; the worker answers one line:
{"ok": true, ...} or {"ok": false, "error": "one line"}. Ops every worker has:

    {"op": "info"}                              -> {"ok": true, "framework", versions...}
    {"op": "setup", "name": N, "spec": {...}}   -> build and warm up variant N
    {"op": "time", "name": N, "steps": S}       -> {"ok": true, "seconds", "steps", "loss"}
    {"op": "quit"}                              -> {"ok": true}, then the worker exits

A worker's own prints (libraries write to stdout too) go to stderr: the protocol has the
process's original stdout to itself.
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback


class WorkerError(RuntimeError):
    """A worker answered with an error, or died."""


def serve(handlers, stdin=None, stdout=None):
    """The worker's loop: read requests from `stdin`, answer with `handlers[op](**fields)`
    (a dict, sent with "ok": true) until "quit" or end of input. An exception becomes
    {"ok": false, "error": ...} and the loop goes on."""
    if stdout is None:  # keep the real stdout for answers; stray prints go to stderr
        stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = stdin or sys.stdin
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.pop("op")
            if op == "quit":
                _answer(stdout, {"ok": True})
                return
            if op not in handlers:
                raise WorkerError(f"unknown op {op!r} (have: {', '.join(sorted(handlers))})")
            _answer(stdout, {"ok": True, **handlers[op](**request)})
        except Exception as err:  # any failure is the driver's to report
            traceback.print_exc(file=sys.stderr)
            first = (str(err).strip().splitlines() or [""])[0]
            _answer(stdout, {"ok": False, "error": f"{type(err).__name__}: {first}"[:300]})


def _answer(stdout, message):
    stdout.write(json.dumps(message) + "\n")
    stdout.flush()


class Worker:
    """The driver's end: a worker subprocess (`argv`) and its requests. Its stderr goes to
    a temporary file whose tail is shown when it fails."""

    def __init__(self, label, argv, env=None, cwd=None):
        self.label = label
        self.log = tempfile.NamedTemporaryFile(
            "w+", prefix=f"bench-{label}-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=cwd,
        )

    def request(self, op, **fields):
        """Send one request; its answer's fields, or WorkerError."""
        self.send(op, **fields)
        return self.receive()

    def send(self, op, **fields):
        """Send a request without waiting (several workers can then work at once);
        `receive` collects the answers in order."""
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.label} worker has exited: {self.tail()}")
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def receive(self):
        """The next answer's fields, or WorkerError."""
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"{self.label} worker died: {self.tail()}")
        answer = json.loads(line)
        if not answer.pop("ok", False):
            raise WorkerError(f"{self.label}: {answer.get('error', 'failed')}")
        return answer

    def tail(self, lines=3):
        self.log.flush()
        with open(self.log.name) as f:
            text = f.read().strip().splitlines()
        return " | ".join(text[-lines:]) or f"exit status {self.proc.returncode}"

    def close(self):
        """Ask the worker to quit; kill it if it does not within 30 s."""
        if self.proc.poll() is None:
            try:
                self.request("quit")
                self.proc.wait(timeout=30)
            except (WorkerError, OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)
