"""A fleet of writer threads that records exactly what the server acknowledged."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Acked:
    messages: dict[int, str] = field(default_factory=dict)  # seq -> content, each acknowledged
    context: dict[str, Any] | None = None  # the last acknowledged context
    context_in_flight: dict[str, Any] | None = None  # sent after it, answer never seen


class FleetWriter(threading.Thread):
    """Creates sessions, appends single and batched messages, replaces contexts, one request at a
    time; stops at its deadline or at the first connection failure. Bounded in count and time."""

    def __init__(self, url: str, key: str, name: str, seconds: float, max_requests: int = 5000) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15)
        self.name_prefix = name
        self.deadline = time.monotonic() + seconds
        self.max_requests = max_requests
        self.sessions: dict[str, Acked] = {}
        self.statuses: list[int] = []
        self.error_bodies: list[dict[str, Any]] = []
        self.stop_on_disconnect = True
        self.stopped = threading.Event()
        self.slowest_s = 0.0  # the longest any answered request took

    def _send(self, method: str, path: str, body: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = self.client.request(method, path, json=body)
        except httpx.TransportError:
            return None
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)
        self.statuses.append(response.status_code)
        if response.status_code >= 400:
            self.error_bodies.append(response.json())
        return response

    def run(self) -> None:
        step = 0
        while time.monotonic() < self.deadline and step < self.max_requests and not self.stopped.is_set():
            step += 1
            if not self._one_step(step) and self.stop_on_disconnect:
                return

    def _one_step(self, step: int) -> bool:
        if not self.sessions or step % 12 == 0:
            response = self._send("POST", "/sessions", {"name": f"{self.name_prefix}-{step}"})
            if response is not None and response.status_code == 201:
                self.sessions[response.json()["id"]] = Acked()
            return response is not None
        sid = list(self.sessions)[step % len(self.sessions)]
        acked = self.sessions[sid]
        if step % 5 == 0:
            context = {"writer": self.name_prefix, "step": step}
            acked.context_in_flight = context
            response = self._send("PUT", f"/sessions/{sid}/context", context)
            if response is not None and response.status_code == 200:
                acked.context, acked.context_in_flight = context, None
            return response is not None
        texts = [f"{sid[-6:]}-{step}-{i}" for i in range(3 if step % 3 == 0 else 1)]
        body: Any = {"messages": [{"role": "user", "content": t} for t in texts]}
        if len(texts) == 1:
            body = {"role": "assistant", "content": texts[0]}
        response = self._send("POST", f"/sessions/{sid}/messages", body)
        if response is not None and response.status_code == 201:
            stored = response.json()
            for message in stored.get("messages", [stored]):
                acked.messages[message["seq"]] = message["content"]
        return response is not None

    def acknowledged_writes(self) -> int:
        # list() copies in one step, so this may be called while the writer thread adds sessions.
        return sum(len(a.messages) + (a.context is not None) + 1 for a in list(self.sessions.values()))


def check_everything_acknowledged_survived(client: httpx.Client, writers: list[FleetWriter]) -> int:
    """Every acknowledged session, message (in order, seq without gaps) and context is there."""
    checked = 0
    for writer in writers:
        for sid, acked in writer.sessions.items():
            response = client.get(f"/sessions/{sid}")
            assert response.status_code == 200, f"acknowledged session {sid} lost: {response.text}"
            session = response.json()
            seqs = [m["seq"] for m in session["messages"]]
            assert seqs == list(range(1, len(seqs) + 1)), f"{sid}: seq has gaps {seqs}"
            stored = {m["seq"]: m["content"] for m in session["messages"]}
            for seq, content in acked.messages.items():
                assert stored.get(seq) == content, f"{sid}: acknowledged message {seq} lost or changed"
            if acked.context is not None:
                # The last acknowledged context, or one sent after it whose answer was lost in the crash.
                assert session["context"] in (acked.context, acked.context_in_flight), sid
            checked += 1
    return checked
