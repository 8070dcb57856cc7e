"""A gateway killed between a write and its answer, and started again: the client's restart tests."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx

from benchmarks.server import joined_server


class KilledAfterTheWrite(httpx.HTTPTransport):
    """Kills the gateway once the first message write has been applied, before its answer is read;
    `restart` runs on a thread of its own."""

    def __init__(self, gateway: dict[str, Any], restart: Any) -> None:
        super().__init__()
        self.gateway = gateway
        self.restart = restart
        self.armed = True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not (self.armed and request.method == "POST" and request.url.path.endswith("/messages")):
            return response
        self.armed = False
        response.read()
        assert response.status_code == 201  # applied and logged on its shard
        server = self.gateway["server"]
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        threading.Thread(target=self.restart, daemon=True).start()
        raise httpx.RemoteProtocolError("server disconnected without a response", request=request)


def restarter(gateway: dict[str, Any], after_s: float, done: threading.Event) -> Any:
    port = gateway["server"].port

    def restart() -> None:
        time.sleep(after_s)
        data_dir, ray_address, env = gateway["data_dir"], gateway["ray_address"], gateway["env"]
        gateway["server"] = joined_server(data_dir, ray_address, env, port=port)
        done.set()

    return restart
