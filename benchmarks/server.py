"""Starting and stopping a real `session-engine serve` process, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import ClassVar

import httpx

from engine.models.files import summarizer_directory

# Ray's own processes bind ports the kernel picks (its ephemeral range) and its workers take
# 10002-19999, so a port taken from either can be gone by the time a server started with it binds
# (seen in make test: a server's port taken by Ray's processes during its start). Ours come from
# between the two.
_OWN_PORTS = (20000, 32767)


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, outside the ranges Ray takes its ports from."""
    low, high = _OWN_PORTS
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, ephemeral_low - 1)
    for port in random.sample(range(low, high + 1), min(200, max(0, high - low + 1))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no such range on this machine: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_summarizer() -> Path:
    """The summarizer a benchmark's server loads unless told otherwise: the default model,
    converted once into benchmarks/.cache (not per data directory)."""
    return Path(summarizer_directory(None, Path(__file__).resolve().parent / ".cache")[0])


class ServerProcess:
    """`session-engine serve` in its own process group, stopped only by its own pid group.

    `base_env` goes to every server started after it is set, under the env given per server: the
    test suite puts its tiny summarizer there so no test server loads the default model."""

    base_env: ClassVar[dict[str, str]] = {}
    started: ClassVar[list[ServerProcess]] = []  # every server this process started, for retired_namespaces

    def __init__(self, data_dir: Path, args: list[str], env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SESSION_ENGINE_")}
        full_env |= {**ServerProcess.base_env, **env}
        self.env = env
        self.joined = "--ray-address" in args  # a Ray it did not start: its actors outlive it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "session_engine",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        ServerProcess.started.append(self)

    def wait_ready(self, timeout_s: float = 90.0) -> ServerProcess:
        """Until /readyz is 200 and no longer "starting": the models and memory shards have loaded
        too, not only the session shards (which make it 200)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2)
                if ready.status_code == 200 and ready.json().get("status") != "starting":
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill_session(self) -> int:
        """SIGKILL every process of the server's session at once, as a power cut would end them: the
        gateway, its Ray and the actors' workers (Ray puts some in process groups of their own,
        never in another session). Returns how many processes were killed."""
        sid = self.proc.pid  # started with start_new_session, so its pid is the session id
        killed = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
        self.proc.wait(30)
        self._log.close()
        return killed

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM to the server alone, as `kill PID` sends it: the server stops its Ray processes
        itself. (Signalling the whole group would hit Ray's processes first and make Ray's own
        shutdown wait seconds for processes already gone.) Whatever is left of the group is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


def retired_namespaces() -> set[str]:
    """The Ray namespaces of joined servers that have all stopped. A joined gateway leaves its
    (detached) actors running for the next gateway, so whoever started it removes them once done."""
    used: dict[str, bool] = {}
    for server in ServerProcess.started:
        namespace = server.env.get("SESSION_ENGINE_RAY__NAMESPACE")
        if namespace and server.joined:
            used[namespace] = used.get(namespace, False) or server.proc.poll() is None
    return {namespace for namespace, running in used.items() if not running}


def joined_server(
    data_dir: Path, ray_address: str, env: dict[str, str], *args: str, port: int | None = None
) -> ServerProcess:
    """A gateway joining an existing Ray. Its shards live in a namespace of its own unless env names
    one; a gateway started again with the same namespace finds the same (detached) shards."""
    env = {"SESSION_ENGINE_RAY__NAMESPACE": f"test-{uuid.uuid4().hex[:8]}", **env}
    return ServerProcess(data_dir, ["--ray-address", ray_address, *args], env, port).wait_ready()
