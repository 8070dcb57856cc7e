"""The MCP tools through the official SDK's own client, over streamable HTTP, on a real gateway on
a real local Ray: the tools an agent sees, their schemas (the HTTP API's models), a session's life
through them, memory search, errors as tool errors (each bad input refused as its HTTP route refuses
it), and keys and organizations as in the API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from api.schemas import AppendMessagesIn, CreateSessionIn, ForkSessionIn, SearchMemoryIn
from benchmarks.server import ServerProcess
from tests.integration.conftest import assert_error

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "mcp_client.py"
T = TypeVar("T")
TOOLS = {
    "search_memory",
    "get_session",
    "create_session",
    "append_messages",
    "update_context",
    "fork_session",
    "close_session",
}


def with_tools(server: ServerProcess, key: str, work: Callable[[ClientSession], Awaitable[T]]) -> T:
    async def run() -> T:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
        async with (
            http,
            streamable_http_client(f"{server.url}/mcp/", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(run())


async def call(session: ClientSession, tool: str, /, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    structured: dict[str, Any] = result.structured_content
    return structured


def error_body(result: Any) -> dict[str, Any]:
    """The API's error body: the tool error's text and its structured content."""
    assert result.is_error, result.content
    body: dict[str, Any] = json.loads(result.content[0].text)
    assert set(body) == {"error", "code", "details", "hint"} and body["hint"], body
    assert result.structured_content == body
    return body


def error_code(result: Any) -> str:
    return str(error_body(result)["code"])


def test_the_tools_take_the_http_apis_own_models(ray_server: ServerProcess) -> None:
    async def listed(session: ClientSession) -> dict[str, Any]:
        return {tool.name: tool.input_schema for tool in (await session.list_tools()).tools}

    schemas = with_tools(ray_server, "key-org190", listed)
    assert set(schemas) == TOOLS
    for tool, argument, model in (
        ("create_session", "session", CreateSessionIn),
        ("append_messages", "messages", AppendMessagesIn),
        ("search_memory", "query", SearchMemoryIn),
        ("fork_session", "fork", ForkSessionIn),
    ):
        definitions = schemas[tool].get("$defs", {})
        ref = schemas[tool]["properties"][argument]["$ref"].rsplit("/", 1)[1]
        expected = model.model_json_schema()
        assert definitions[ref]["properties"] == expected["properties"]
        assert definitions[ref].get("required", []) == expected.get("required", [])


def test_an_agent_keeps_a_session_and_finds_it_in_memory(ray_server: ServerProcess) -> None:
    async def agent(session: ClientSession) -> None:
        made = await call(
            session, "create_session", session={"name": "refund for order 1234", "context": {"k": 1}}
        )
        sid = made["id"]
        stored = await call(
            session,
            "append_messages",
            session_id=sid,
            messages={
                "messages": [
                    {"role": "user", "content": "The blender I ordered arrived with a cracked jar."},
                    {"role": "assistant", "content": "I have issued a refund for the cracked blender jar."},
                ]
            },
        )
        assert [m["seq"] for m in stored["messages"]] == [1, 2]
        context = await call(session, "update_context", session_id=sid, context={"k": 2}, if_match=1)
        assert context["version"] == 2
        stale = await session.call_tool("update_context", {"session_id": sid, "context": {}, "if_match": 1})
        assert stale.is_error and error_code(stale) == "PRECONDITION_FAILED"
        read = await call(session, "get_session", session_id=sid)
        assert read["message_count"] == 2 and read["messages"][1]["role"] == "assistant"
        assert (await call(session, "close_session", session_id=sid))["status"] == "closed"
        for _ in range(120):  # indexing is a step of the close's background job
            query = {"query_text": "broken blender jar", "top_k": 3}
            found = await session.call_tool("search_memory", {"query": query})
            if found.is_error:  # the embedder may still be loading: UNAVAILABLE, retried as advised
                assert error_code(found) == "UNAVAILABLE"
            elif any(match["id"] == sid for match in found.structured_content["matches"]):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the closed session was never found in memory")

    with_tools(ray_server, "key-org191", agent)


def test_tools_are_scoped_to_the_callers_organization(ray_server: ServerProcess) -> None:
    async def mine(session: ClientSession) -> str:
        return str((await call(session, "create_session", session={"name": "private"}))["id"])

    sid = with_tools(ray_server, "key-org192", mine)

    async def theirs(session: ClientSession) -> None:
        for tool, arguments in (
            ("get_session", {"session_id": sid}),
            ("append_messages", {"session_id": sid, "messages": {"role": "user", "content": "x"}}),
            ("close_session", {"session_id": sid}),
        ):
            result = await session.call_tool(tool, arguments)
            assert result.is_error and error_code(result) == "NOT_FOUND"
        bad = await session.call_tool("create_session", {"session": {"name": ""}})
        assert (
            error_code(bad) == "VALIDATION_ERROR"
        )  # the model's own validation: a name of at least one character

    with_tools(ray_server, "key-org193", theirs)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert_error(httpx.post(f"{ray_server.url}/mcp/", json=body), 401, "AUTH_REQUIRED")
    wrong = httpx.post(f"{ray_server.url}/mcp/", json=body, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "AUTH_INVALID")


@dataclass(frozen=True)
class BadInput:
    """One bad input as a tool call and as the HTTP request the tool stands for. Arguments and body
    are JSON texts as a client writes them (SID: the session's id); NaN and the like go as raw
    JSON-RPC, since the SDK's client writes them as null."""

    tool: str
    arguments: str
    method: str
    path: str
    body: str | None
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False


BIG = 10**30
BATCH = json.dumps({"messages": [{"role": "user", "content": "x"}] * 101})
DEEP = "{}"
for _ in range(64):
    DEEP = '{"a": ' + DEEP + "}"
BAD_INPUTS = {
    "NaN": BadInput(
        "update_context",
        '{"session_id": SID, "context": {"x": NaN}}',
        "PUT",
        "/sessions/SID/context",
        '{"x": NaN}',
        400,
        raw=True,
    ),
    "-Infinity": BadInput(
        "create_session",
        '{"session": {"name": "n", "context": {"x": [1, -Infinity]}}}',
        "POST",
        "/sessions",
        '{"name": "n", "context": {"x": [1, -Infinity]}}',
        400,
        raw=True,
    ),
    "1e400": BadInput(
        "update_context",
        '{"session_id": SID, "context": {"x": {"y": 1e400}}}',
        "PUT",
        "/sessions/SID/context",
        '{"x": {"y": 1e400}}',
        422,
        raw=True,
    ),
    "an integer past 64 bits": BadInput(
        "update_context",
        f'{{"session_id": SID, "context": {{"n": {BIG}}}}}',
        "PUT",
        "/sessions/SID/context",
        f'{{"n": {BIG}}}',
        422,
    ),
    "an integer under -2^63": BadInput(
        "create_session",
        f'{{"session": {{"name": "n", "context": {{"n": {-(2**63) - 1}}}}}}}',
        "POST",
        "/sessions",
        f'{{"name": "n", "context": {{"n": {-(2**63) - 1}}}}}',
        422,
    ),
    "a wrong type": BadInput(
        "create_session", '{"session": {"name": 5}}', "POST", "/sessions", '{"name": 5}', 422
    ),
    "an unknown field": BadInput(
        "create_session",
        '{"session": {"name": "n", "colour": "red"}}',
        "POST",
        "/sessions",
        '{"name": "n", "colour": "red"}',
        422,
    ),
    "no name": BadInput("create_session", '{"session": {}}', "POST", "/sessions", "{}", 422),
    "an unknown role": BadInput(
        "append_messages",
        '{"session_id": SID, "messages": {"role": "robot", "content": "x"}}',
        "POST",
        "/sessions/SID/messages",
        '{"role": "robot", "content": "x"}',
        422,
    ),
    "a batch too large": BadInput(
        "append_messages",
        f'{{"session_id": SID, "messages": {BATCH}}}',
        "POST",
        "/sessions/SID/messages",
        BATCH,
        422,
    ),
    "a negative after_seq": BadInput(
        "get_session", '{"session_id": SID, "after_seq": -1}', "GET", "/sessions/SID?after_seq=-1", None, 422
    ),
    "a negative at_seq": BadInput(
        "fork_session",
        '{"session_id": SID, "fork": {"at_seq": -1}}',
        "POST",
        "/sessions/SID/fork",
        '{"at_seq": -1}',
        422,
    ),
    "an If-Match that is no version": BadInput(
        "update_context",
        '{"session_id": SID, "context": {}, "if_match": -1}',
        "PUT",
        "/sessions/SID/context",
        "{}",
        422,
        {"If-Match": "-1"},
    ),
    "a context too deep": BadInput(
        "update_context",
        f'{{"session_id": SID, "context": {DEEP}}}',
        "PUT",
        "/sessions/SID/context",
        DEEP,
        422,
    ),
    "a context too large": BadInput(
        "update_context",
        '{"session_id": SID, "context": {"x": "%s"}}' % ("a" * 70_000),
        "PUT",
        "/sessions/SID/context",
        '{"x": "%s"}' % ("a" * 70_000),
        413,
    ),
    "an unknown filter operator": BadInput(
        "search_memory",
        '{"query": {"query_text": "x", "filter": {"closed_at": {"$after": 5}}}}',
        "POST",
        "/vectors/query",
        '{"namespace": "session-memory", "query_text": "x", "filter": {"closed_at": {"$after": 5}}}',
        422,
    ),
}


@pytest.fixture(scope="module")
def refusing_session(ray_server: ServerProcess) -> Iterator[str]:
    """An active session of org194 that the bad inputs are sent to."""
    made = httpx.post(f"{ray_server.url}/sessions", json={"name": "bad inputs"}, headers=_auth("key-org194"))
    assert made.status_code == 201, made.text
    yield str(made.json()["id"])


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("bad", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_a_tool_refuses_a_bad_input_as_its_route_does(
    ray_server: ServerProcess, refusing_session: str, bad: BadInput
) -> None:
    sid = json.dumps(refusing_session)
    arguments = bad.arguments.replace("SID", sid)
    http = httpx.request(
        bad.method,
        f"{ray_server.url}{bad.path.replace('SID', refusing_session)}",
        content=None if bad.body is None else bad.body.encode(),
        headers={**_auth("key-org194"), "Content-Type": "application/json", **bad.headers},
        timeout=60,
    )
    expected = assert_error(
        http, bad.status, "PAYLOAD_TOO_LARGE" if bad.status == 413 else "VALIDATION_ERROR"
    )
    if bad.raw:
        tool = _raw_tool_call(ray_server, "key-org194", bad.tool, arguments)
    else:

        async def call(session: ClientSession) -> dict[str, Any]:
            return error_body(await session.call_tool(bad.tool, json.loads(arguments)))

        tool = with_tools(ray_server, "key-org194", call)
    assert (tool["code"], tool["details"]) == (expected["code"], expected["details"])
    if bad.status == 422:
        assert expected["details"]["field"] and expected["details"]["errors"]
    context = httpx.get(f"{ray_server.url}/sessions/{refusing_session}", headers=_auth("key-org194")).json()
    assert (context["version"], context["context"], context["message_count"]) == (1, {}, 0)


def _raw_tool_call(server: ServerProcess, key: str, tool: str, arguments: str) -> dict[str, Any]:
    """A tools/call as a client that writes NaN (Python's json, say) sends it."""
    message = '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "%s", "arguments": %s}}'
    response = httpx.post(
        f"{server.url}/mcp/",
        content=(message % (tool, arguments)).encode(),
        headers={
            **_auth(key),
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["isError"], result
    body: dict[str, Any] = json.loads(result["content"][0]["text"])
    assert result["structuredContent"] == body
    return body


def test_an_mcp_body_over_the_limit_gets_the_apis_413(ray_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the gateway counts it as it arrives
        yield b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"x": "'
        for _ in range(6):
            yield b"a" * 1024 * 1024
        yield b'"}}'

    response = httpx.post(
        f"{ray_server.url}/mcp/",
        content=chunks(),
        headers={**_auth("key-org194"), "Content-Type": "application/json", "Accept": "application/json"},
        timeout=60,
    )
    body = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert body["details"] == {"limit_bytes": 5 * 1024 * 1024}


def test_the_documented_python_example_keeps_a_session(ray_server: ServerProcess) -> None:
    # Run as a user runs it: its own process, the gateway's URL and a key on the command line.
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), ray_server.url, "key-org195"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed["tools"]) == TOOLS
    assert (printed["seqs"], printed["version"], printed["status"]) == ([1, 2], 2, "closed")
    assert printed["refused"]["code"] == "PRECONDITION_FAILED"
    assert printed["refused"]["details"]["current_version"] == 2
    read = httpx.get(f"{ray_server.url}/sessions/{printed['session_id']}", headers=_auth("key-org195"))
    assert read.json()["message_count"] == 2 and read.json()["context"] == {"step": 2}
