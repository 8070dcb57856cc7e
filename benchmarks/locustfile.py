"""The agent-fleet workload for Locust: run it with Locust's web UI or distributed workers.

Each simulated agent, over and over: creates a session, appends a few dozen messages (now and
then a tool call and its result, now and then a context update), reads the session back, closes
it, and queries the organization's memory of closed sessions.

    BENCH_API_KEY=<key> locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080
    BENCH_API_KEY=<key> locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080 \\
        --headless -u 64 -r 64 -t 60s

Settings (environment): BENCH_API_KEY (required), BENCH_MESSAGES_MIN/MAX (messages a session,
default 24 to 40), BENCH_THINK_S (seconds an agent waits between requests, default 0: as fast as
the server answers). `python -m benchmarks` runs this file headless for its `fleet` scenario.
"""

from __future__ import annotations

import os
import random
from typing import Any

from locust import FastHttpUser, constant, task

TOPICS = ("a flaky CI job", "a refund request", "a database migration", "a travel booking", "a bug triage")


class Agent(FastHttpUser):
    wait_time = constant(float(os.environ.get("BENCH_THINK_S", "0")))

    def on_start(self) -> None:
        key = os.environ.get("BENCH_API_KEY")
        if not key:
            raise RuntimeError("set BENCH_API_KEY to an API key of the engine under test")
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.low = int(os.environ.get("BENCH_MESSAGES_MIN", "24"))
        self.high = int(os.environ.get("BENCH_MESSAGES_MAX", "40"))

    def _post(self, path: str, body: Any, name: str) -> Any:
        with self.client.post(path, json=body, headers=self.headers, name=name, catch_response=True) as r:
            if r.status_code >= 400:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return None
            return r.json()

    @task
    def session_lifecycle(self) -> None:
        topic = random.choice(TOPICS)
        session = self._post("/sessions", {"name": f"agent working on {topic}"}, "create session")
        if session is None:
            return
        base = f"/sessions/{session['id']}"
        for i in range(random.randint(self.low, self.high)):
            if i % 8 == 7:
                call = f"call_{i}"
                self._post(
                    f"{base}/messages",
                    {
                        "messages": [
                            {"role": "assistant", "content": f"Looking up {topic}.", "tool_call_id": call},
                            {"role": "tool", "content": '{"status":"ok","rows":3}', "tool_call_id": call,
                             "tool_name": "lookup"},
                        ]
                    },
                    "append tool call",
                )  # fmt: skip
            else:
                role = "user" if i % 2 == 0 else "assistant"
                text = f"Turn {i} about {topic}: a short agent message of roughly a hundred characters."
                self._post(f"{base}/messages", {"role": role, "content": text}, "append message")
            if i % 10 == 9:
                with self.client.put(
                    f"{base}/context", json={"step": i, "topic": topic}, headers=self.headers,
                    name="update context", catch_response=True,
                ) as r:  # fmt: skip
                    if r.status_code >= 400:
                        r.failure(f"{r.status_code}: {r.text[:200]}")
        self.client.get(base, headers=self.headers, name="read session")
        self._post(f"{base}/close", {}, "close session")
        self._post(
            "/vectors/query",
            {"namespace": "session-memory", "query_text": f"what was done about {topic}", "top_k": 5},
            "query memory",
        )
