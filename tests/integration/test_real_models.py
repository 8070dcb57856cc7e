"""The default models end to end, as a new user meets them: SmolLM2-135M-Instruct converted from its
packaged GGUF file, all-MiniLM-L6-v2 from its package, nothing downloaded. Three conversations on
clearly different topics are closed; a question on each topic must find its own session first,
and still does after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from benchmarks.server import ServerProcess

KEY = "real-models-key"
ENV = {"SESSION_ENGINE_API_KEYS": f"{KEY}=acme", "RAY_ADDRESS": ""}

CONVERSATIONS = {
    "baking": [
        ("user", "My sourdough bread comes out flat and dense. What am I doing wrong?"),
        ("assistant", "Your starter may be weak. Feed it twice a day until it doubles in size within six "
         "hours, and let the dough rise longer before baking it in a hot oven."),
        ("user", "Should I bake the loaf in a Dutch oven?"),
        ("assistant", "Yes. Bake the bread covered at 250 C for 20 minutes to trap steam, then uncovered "
         "for 25 minutes so the crust browns."),
    ],
    "kubernetes": [
        ("user", "My Kubernetes pod keeps restarting with CrashLoopBackOff after I deployed a new image."),
        ("assistant", "Run kubectl logs with --previous to see why the container exited, and check that "
         "the liveness probe points at the right port."),
        ("user", "The logs say the database connection string is missing."),
        ("assistant", "Add the DATABASE_URL environment variable to the deployment from a Secret, then "
         "apply it again; the pods will restart with the setting."),
    ],
    "football": [
        ("user", "Who won the football match last night? I missed the second half."),
        ("assistant", "The home team won 3 to 1. Their striker scored twice after half time and the "
         "goalkeeper saved a penalty."),
        ("user", "Does that put them top of the league table?"),
        ("assistant", "Yes, they are now two points clear at the top of the league with five matches of "
         "the season left to play."),
    ],
}  # fmt: skip

QUESTIONS = {
    "baking": "how do I bake better bread at home?",
    "kubernetes": "why is my container crashing in the cluster?",
    "football": "what was the score of the soccer game?",
}


def ask(client: httpx.Client, question: str) -> list[str]:
    body = {"namespace": "session-memory", "query_text": question, "top_k": 3}
    response = client.post("/vectors/query", json=body)
    assert response.status_code == 200, response.text
    return [m["metadata"]["name"] for m in response.json()["matches"]]


@pytest.mark.slow
def test_three_topics_are_each_recalled_first_with_the_default_models(
    tmp_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real default summarizer, not the tiny one.
    monkeypatch.setattr(ServerProcess, "base_env", {"SESSION_ENGINE_EXPIRY_TICK_S": "0.1"})
    server = ServerProcess(tmp_data, [], ENV).wait_ready(timeout_s=600)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
            ids = {}
            for topic, messages in CONVERSATIONS.items():
                sid = client.post("/sessions", json={"name": topic}).json()["id"]
                body = {"messages": [{"role": role, "content": text} for role, text in messages]}
                assert client.post(f"/sessions/{sid}/messages", json=body).status_code == 201
                ids[topic] = sid
            for sid in ids.values():
                assert client.post(f"/sessions/{sid}/close").json()["summary_status"] == "pending"
            deadline = time.monotonic() + 600
            summaries = {}
            for topic, sid in ids.items():
                while (session := client.get(f"/sessions/{sid}").json())["summary_status"] not in (
                    "ready",
                    "failed",
                ):
                    assert time.monotonic() < deadline, session
                    time.sleep(0.5)
                assert session["summary_status"] == "ready", session
                # The model's pass, after the extract and its index; then the session is searchable.
                while "upgrade" in session["summary_provenance"] or session["index_status"] != "ready":
                    assert time.monotonic() < deadline, session
                    time.sleep(0.5)
                    session = client.get(f"/sessions/{sid}").json()
                assert session["summary_provenance"]["model"] == "SmolLM2-135M-Instruct", session
                summaries[topic] = session["summary"]
            for topic, question in QUESTIONS.items():
                assert ask(client, question)[0] == topic, (question, summaries)
    finally:
        server.stop(timeout_s=60)
    assert list((tmp_data / "models").iterdir()), "the GGUF model was converted once, under the data dir"

    restarted = ServerProcess(tmp_data, [], ENV).wait_ready(timeout_s=600)
    try:
        with httpx.Client(base_url=restarted.url, headers=auth, timeout=60) as client:
            for topic, question in QUESTIONS.items():
                assert ask(client, question)[0] == topic, question
    finally:
        restarted.stop(timeout_s=60)
