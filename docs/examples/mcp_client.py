"""Connect to the session engine's MCP tools from Python with the official `mcp` SDK.

    python docs/examples/mcp_client.py http://127.0.0.1:8080 sek_...

(or SESSION_ENGINE_URL and SESSION_ENGINE_KEY in the environment). It lists the tools, keeps a
session through them, reads how a refused call looks, and prints what it did as JSON. The SDK's
streamable HTTP client sends the API key as a Bearer header on every request; the tools act for
that key's organization, as the HTTP API does. (tests/integration/test_mcp.py runs this file
against a real gateway.)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx2  # the HTTP client the mcp SDK is built on
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def keep_a_session(url: str, key: str) -> dict[str, Any]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60)
    async with (
        http,
        streamable_http_client(f"{url}/mcp/", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = sorted(tool.name for tool in (await session.list_tools()).tools)

        # A tool's answer is the HTTP route's answer, as the result's structured content.
        new = {"name": "order 1234", "context": {"step": 1}}
        made = await session.call_tool("create_session", {"session": new})
        sid = made.structured_content["id"]
        batch = {
            "messages": [
                {"role": "user", "content": "My order 1234 arrived damaged."},
                {"role": "assistant", "content": "Sorry about that: a replacement is on its way."},
            ]
        }
        stored = await session.call_tool("append_messages", {"session_id": sid, "messages": batch})
        change = {"session_id": sid, "context": {"step": 2}, "if_match": 1}  # only at version 1
        updated = await session.call_tool("update_context", change)

        # A refused call is an error result (is_error) whose structured content, and text, is the
        # API's error body {error, code, details, hint}: here If-Match is no longer the version.
        stale = await session.call_tool("update_context", {"session_id": sid, "context": {}, "if_match": 1})
        assert stale.is_error

        closed = await session.call_tool("close_session", {"session_id": sid})
        return {
            "tools": tools,
            "session_id": sid,
            "seqs": [m["seq"] for m in stored.structured_content["messages"]],
            "version": updated.structured_content["version"],
            "refused": stale.structured_content,
            "status": closed.structured_content["status"],
        }


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SESSION_ENGINE_URL", "http://127.0.0.1:8080")
    key = sys.argv[2] if len(sys.argv) > 2 else os.environ["SESSION_ENGINE_KEY"]
    print(json.dumps(asyncio.run(keep_a_session(url.rstrip("/"), key)), indent=2))


if __name__ == "__main__":
    main()
