"""The MCP tools through the official SDK's own client, over streamable HTTP, on a real gateway on
a real local Ray: the tools an agent sees, their schemas (the HTTP API's models), a session's life
through them, memory search, errors as tool errors, and keys and organizations as in the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from api.schemas import AppendMessagesIn, CreateSessionIn, SearchMemoryIn
from benchmarks.server import ServerProcess
from tests.integration.conftest import assert_error

pytestmark = pytest.mark.integration
T = TypeVar("T")
TOOLS = {
    "search_memory",
    "get_session",
    "create_session",
    "append_messages",
    "update_context",
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


def error_code(result: Any) -> str:
    """The API's error body is the tool error's text (after the SDK's "Error executing tool …: ")."""
    text = result.content[0].text
    body = json.loads(text[text.index("{") :])
    assert set(body) == {"error", "code", "details", "hint"} and body["hint"], body
    return str(body["code"])


def test_the_tools_take_the_http_apis_own_models(ray_server: ServerProcess) -> None:
    async def listed(session: ClientSession) -> dict[str, Any]:
        return {tool.name: tool.input_schema for tool in (await session.list_tools()).tools}

    schemas = with_tools(ray_server, "key-org190", listed)
    assert set(schemas) == TOOLS
    for tool, argument, model in (
        ("create_session", "session", CreateSessionIn),
        ("append_messages", "messages", AppendMessagesIn),
        ("search_memory", "query", SearchMemoryIn),
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
            found = await call(
                session, "search_memory", query={"query_text": "broken blender jar", "top_k": 3}
            )
            if any(match["id"] == sid for match in found["matches"]):
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
        assert bad.is_error  # the model's own validation: a name of at least one character

    with_tools(ray_server, "key-org193", theirs)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert_error(httpx.post(f"{ray_server.url}/mcp/", json=body), 401, "AUTH_REQUIRED")
    wrong = httpx.post(f"{ray_server.url}/mcp/", json=body, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "AUTH_INVALID")
