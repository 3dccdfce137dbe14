"""Start `genrecedit serve` as a child process on loopback and wait until it answers (used by the real-server
tests and by `bench/serve_load.py`)."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from genrecedit.serving.access import API_KEY_ENV, API_KEY_HEADER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(run, state) as server:`` -> ``server.url``, ``server.client`` (httpx, sending the API
    key), ``kill()``. The server gets ``api_key`` (default: a fresh random one) through ``$GENRECEDIT_API_KEY``;
    ``api_key=None`` and ``extra_args`` (e.g. ``["--insecure-no-auth"]``) start it without one."""

    def __init__(self, run_dir: Path, state_dir: Path, overrides: list[str] | None = None, log: Path | None = None,
                 startup_timeout: float = 120.0, api_key: str | None = "random",
                 extra_args: list[str] | None = None) -> None:
        self.run_dir, self.state_dir = Path(run_dir), Path(state_dir)
        self.overrides = list(overrides or [])
        self.log = Path(log) if log else self.state_dir.parent / f"{self.state_dir.name}-server.log"
        self.startup_timeout = startup_timeout
        self.api_key = secrets.token_urlsafe(24) if api_key == "random" else api_key
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.client: httpx.Client | None = None

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "genrecedit.cli", "serve", "--model", str(self.run_dir), "--port",
               str(self.port), "--state-dir", str(self.state_dir)]
        for o in self.overrides:
            cmd += ["-o", o]
        cmd += self.extra_args
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        if self.api_key is not None:
            env[API_KEY_ENV] = self.api_key
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, "TQDM_DISABLE": "1"})
        headers = {API_KEY_HEADER: self.api_key} if self.api_key is not None else {}
        self.client = httpx.Client(base_url=self.url, timeout=120.0, headers=headers)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.client.get("/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {self.startup_timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs (a crash)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.client:
            self.client.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
