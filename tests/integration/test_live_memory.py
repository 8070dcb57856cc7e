"""Live memory on the real server on Ray: an open session's turns are found while it is open, its
status filter says active, a delete takes them out, and as_of before the append hides them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from benchmarks.server import ServerProcess

from .conftest import ORGS, Api
from .test_memory_as_of import found, now_ms, say

_orgs = iter(ORGS[660:670])
WAIT_S = 20.0  # bounded: a turn is in memory within a tick or two of being said


@pytest.fixture(scope="module")
def ray_client(ray_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def ray_api(ray_client: httpx.Client) -> Api:
    return Api(ray_client, next(_orgs))


def shown(api: Api, sid: str, word: str, **options: Any) -> dict[str, Any] | None:
    """The session's match for `word`, if one of its highlights says it."""
    for match in found(api, word, **options):
        if match["id"] == sid and any(word in h["content"] for h in match["metadata"]["highlights"]):
            return match
    return None


def wait_shown(api: Api, sid: str, word: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        match = shown(api, sid, word)
        if match is not None:
            return match
        time.sleep(0.1)
    raise AssertionError(f"{word!r} of open session {sid} not found in {WAIT_S} s")


def test_an_open_sessions_turn_is_found_and_its_status_is_active(ray_api: Api) -> None:
    sid = ray_api.new_session(name="Maya's birds")["id"]
    say(ray_api, sid, "My parrot Zephyrine whistles opera every morning.")
    match = wait_shown(ray_api, sid, "Zephyrine")
    assert match["metadata"]["status"] == "active"
    assert match["metadata"]["closed_at"] is None
    assert match["metadata"]["name"] == "Maya's birds"
    assert "live" not in match["metadata"]
    assert shown(ray_api, sid, "Zephyrine", filter={"status": "active"}) is not None
    assert shown(ray_api, sid, "Zephyrine", filter={"status": "closed"}) is None
    assert ray_api.get(f"/sessions/{sid}").json()["status"] == "active", "indexing never ends it"


def test_a_later_turn_of_an_open_session_is_found_too(ray_api: Api) -> None:
    sid = ray_api.new_session(name="garden")["id"]
    say(ray_api, sid, "We planted tomatoes along the fence.")
    wait_shown(ray_api, sid, "tomatoes")
    say(ray_api, sid, "The Quillfeather hedge needs trimming.")
    wait_shown(ray_api, sid, "Quillfeather")


def test_a_delete_takes_an_open_sessions_turns_out(ray_api: Api) -> None:
    sid = ray_api.new_session(name="secrets")["id"]
    say(ray_api, sid, "The vault code word is Marmalodeon.")
    wait_shown(ray_api, sid, "Marmalodeon")
    assert ray_api.delete(f"/sessions/{sid}").status_code == 204
    deadline = time.monotonic() + WAIT_S
    while shown(ray_api, sid, "Marmalodeon") is not None:
        assert time.monotonic() < deadline, "the deleted session's turn is still found"
        time.sleep(0.1)


def test_as_of_before_the_append_hides_an_open_sessions_turn(ray_api: Api) -> None:
    sid = ray_api.new_session(name="travel")["id"]
    say(ray_api, sid, "Packing for the trip tomorrow.")
    before = now_ms()
    say(ray_api, sid, "We booked the Kestrelholm ferry.")
    wait_shown(ray_api, sid, "Kestrelholm")
    assert shown(ray_api, sid, "Kestrelholm", as_of=before) is None
    assert shown(ray_api, sid, "Packing", as_of=before) is not None


def test_a_close_after_live_indexing_is_found_once_as_closed(ray_api: Api) -> None:
    sid = ray_api.new_session(name="books")["id"]
    say(ray_api, sid, "I am reading The Glass Orchard by Imre Vantongeren.")
    wait_shown(ray_api, sid, "Vantongeren")
    say(ray_api, sid, "Next on my list is Saltmarsh Nights.")
    assert ray_api.post(f"/sessions/{sid}/close").status_code == 200
    deadline = time.monotonic() + WAIT_S
    while True:
        match = shown(ray_api, sid, "Saltmarsh", filter={"status": "closed"})
        if match is not None:
            break
        assert time.monotonic() < deadline, "the closed session's last turn is not found"
        time.sleep(0.1)
    assert match["metadata"]["closed_at"] is not None
    assert "live" not in match["metadata"], "the closing job's session entry replaced the stand-in"
    (earlier,) = [m for m in found(ray_api, "Vantongeren") if m["id"] == sid]
    said = [h["content"] for h in earlier["metadata"]["highlights"] if "Vantongeren" in h["content"]]
    assert said == ["I am reading The Glass Orchard by Imre Vantongeren."], "the live turn, once"
    assert earlier["metadata"]["message_count"] == 2
