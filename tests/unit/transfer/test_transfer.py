"""engine.transfer over shards in this process: an export and an import driven as the gateway and
the operator's command drive them, without HTTP or Ray. Vectors go in batches of one namespace and
one dimension; a batch its namespace refuses lists each of its lines; the cursors are closed when
the stream is left early or one of them cannot open; who may import whose export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from engine.config import EngineConfig
from engine.errors import Forbidden, Internal, Unavailable
from engine.memory.index import IndexParams, normalized
from engine.memory.ops import ImportVectors, OpenVectorExports, UpsertVectors
from engine.sessions.ops import CreateSession, OpenExports
from engine.transfer.exporting import MAX_ORG_EXPORTS, open_export
from engine.transfer.importing import MAX_ERRORS, VECTOR_BATCH, Importer, Limits
from engine.transfer.routes import Routes
from tests.support.local_shards import LocalMemoryTransport, LocalTransport

CONFIG = EngineConfig()
LIMITS = Limits(CONFIG.limits, CONFIG.memory)


class RecordingMemory(LocalMemoryTransport):
    """Memory shards that keep every op they were sent."""

    def __init__(self) -> None:
        super().__init__(1, IndexParams(), embed=lambda texts: np.zeros((len(texts), 3)))
        self.sent: list[Any] = []

    async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
        self.sent += ops
        return await super().call(shard, ops)


def routes() -> tuple[Routes, LocalTransport, RecordingMemory]:
    sessions, memory = LocalTransport(2), RecordingMemory()
    return Routes.direct(sessions, memory), sessions, memory


async def fill(r: Routes, org: str, vectors: int) -> None:
    for i in range(3):
        await r.submit_session(
            org, f"sess_{i:032x}", CreateSession(org, f"sess_{i:032x}", f"s{i}", 60, {"i": i})
        )
    for namespace, dim in (("a", 3), ("b", 5)):
        for start in range(0, vectors, 100):
            ids = tuple(f"{namespace}{n}" for n in range(start, min(start + 100, vectors)))
            rows = normalized(np.random.default_rng(start).standard_normal((len(ids), dim)))
            texts = tuple(f"text {i}" for i in ids)
            await r.submit_memory(
                org, UpsertVectors(org, namespace, ids, rows, tuple({"id": i} for i in ids), None, texts)
            )


async def export_lines(r: Routes, org: str) -> list[bytes]:
    export = await open_export(r, org, 0)
    return b"".join([chunk async for chunk in export.lines()]).splitlines()


async def import_lines(
    r: Routes, lines: list[bytes], into: str | None, *, any_source: bool = True
) -> dict[str, Any]:
    importer = Importer(r, lambda org: LIMITS, into, any_source=any_source)
    for line in lines:
        await importer.push(line)
    return importer.finish()


async def open_counts(sessions: LocalTransport, memory: LocalMemoryTransport) -> list[int]:
    answers = [(await sessions.call(s, [OpenExports()]))[0] for s in range(sessions.shards)]
    answers.append((await memory.call(0, [OpenVectorExports()]))[0])
    return [orjson.loads(a)["exports"] if isinstance(a, bytes) else a["exports"] for a in answers]


async def test_an_export_imports_into_another_organization_in_batches_of_one_namespace() -> None:
    r, sessions, memory = routes()
    await fill(r, "acme", 600)
    lines = await export_lines(r, "acme")
    assert orjson.loads(lines[-1]) == {"kind": "end", "sessions": 3, "messages": 0, "vectors": 1200}
    assert await open_counts(sessions, memory) == [0, 0, 0]  # done: closed
    memory.sent.clear()
    answer = await import_lines(r, lines, "beta")
    imported = {"sessions": 3, "messages": 0, "vectors": 1200}
    assert answer == {"imported": imported, "skipped": 0, "errors": [], "errors_omitted": 0}
    batches = [op for op in memory.sent if isinstance(op, ImportVectors)]
    assert [(op.namespace, len(op.ids)) for op in batches] == [
        ("a", VECTOR_BATCH), ("a", VECTOR_BATCH), ("a", 600 - 2 * VECTOR_BATCH),
        ("b", VECTOR_BATCH), ("b", VECTOR_BATCH), ("b", 600 - 2 * VECTOR_BATCH),
    ]  # fmt: skip
    assert all(op.org == "beta" and op.texts[0] for op in batches)
    again = await import_lines(r, lines, None)  # into the organization the header names: all held
    assert again["imported"] == {"sessions": 0, "messages": 0, "vectors": 0} and again["skipped"] == 1203


async def test_vectors_of_a_dimension_their_namespace_does_not_hold_are_refused_by_line() -> None:
    r, _, _ = routes()
    await fill(r, "acme", 2)
    lines = await export_lines(r, "acme")
    line = {"kind": "vector", "namespace": "a", "text": None, "metadata": {}}
    odd = [orjson.dumps({**line, "id": f"odd{i}", "values": [1, 2]}) for i in range(2)]
    fresh = orjson.dumps({**line, "id": "new", "values": [1, 0, 0]})
    end = orjson.loads(lines[-1])
    body = [*lines[:-1], *odd, fresh, orjson.dumps({**end, "vectors": end["vectors"] + 3})]
    answer = await import_lines(r, body, None)
    assert answer["imported"]["vectors"] == 1 and answer["skipped"] == 7
    assert [e["line"] for e in answer["errors"]] == [len(lines), len(lines) + 1]
    assert all("dimension 3, not 2" in e["error"] for e in answer["errors"])


async def test_a_tenant_may_not_import_another_organizations_export() -> None:
    r, _, _ = routes()
    await fill(r, "acme", 1)
    lines = await export_lines(r, "acme")
    with pytest.raises(Forbidden, match="line 1"):
        await import_lines(r, lines, "beta", any_source=False)


async def test_a_stream_left_early_closes_every_cursor() -> None:
    r, sessions, memory = routes()
    await fill(r, "acme", 10)
    export = await open_export(r, "acme", 0)
    stream = export.lines()
    await anext(stream)  # the header
    assert await open_counts(sessions, memory) == [1, 1, 1]
    await stream.aclose()
    assert await open_counts(sessions, memory) == [0, 0, 0]


async def test_an_export_that_cannot_open_every_cursor_closes_those_it_opened() -> None:
    r, sessions, memory = routes()
    held = [await open_export(r, "acme", 0) for _ in range(MAX_ORG_EXPORTS)]
    with pytest.raises(Unavailable):
        await open_export(r, "acme", 0)
    assert await open_counts(sessions, memory) == [MAX_ORG_EXPORTS] * 3
    for export in held:
        await export.close()
    assert await open_counts(sessions, memory) == [0, 0, 0]


HEADER = orjson.dumps(
    {
        "kind": "header",
        "format": "session-engine-export",
        "version": 1,
        "org": "acme",
        "exported_at": 0,
        "watermarks": {},
    }
)


def vector_line(vector_id: str, values: list[float], namespace: str = "a") -> bytes:
    line = {
        "kind": "vector",
        "namespace": namespace,
        "id": vector_id,
        "values": values,
        "text": None,
        "metadata": {},
    }
    return orjson.dumps(line)


async def test_at_most_one_batch_of_vectors_waits_whatever_dimensions_a_namespace_mixes() -> None:
    r, _, memory = routes()
    importer = Importer(r, lambda org: LIMITS, "acme", any_source=False)
    await importer.push(HEADER)
    pushed = 0
    for dimension in range(1, 41):
        for i in range(3):
            await importer.push(vector_line(f"{dimension}-{i}", [1.0] * dimension))
            pushed += 1
        sent = [op for op in memory.sent if isinstance(op, ImportVectors)]
        assert pushed - sum(len(op.ids) for op in sent) == 3  # only this dimension's vectors wait
    assert {op.vectors.shape[1] for op in sent} == set(range(1, 40))


def refusing_memory(error: Exception) -> RecordingMemory:
    class Refusing(RecordingMemory):
        async def call(self, shard: int, ops: Sequence[Any]) -> list[Any]:
            if any(isinstance(op, ImportVectors) for op in ops):
                return [error for _ in ops]
            return await super().call(shard, ops)

    return Refusing()


async def test_an_answer_lists_the_first_refused_lines_and_counts_the_rest() -> None:
    r, _, _ = routes()
    importer = Importer(r, lambda org: LIMITS, "acme", any_source=False)
    await importer.push(HEADER)
    for i in range(MAX_ERRORS + 5):
        await importer.push(vector_line(f"zero{i}", [0.0, 0.0]))
    await importer.push(
        orjson.dumps({"kind": "end", "sessions": 0, "messages": 0, "vectors": MAX_ERRORS + 5})
    )
    answer = importer.finish()
    assert len(answer["errors"]) == MAX_ERRORS and answer["errors_omitted"] == 5
    assert answer["errors"][0]["line"] == 2


@pytest.mark.parametrize("error", [Unavailable("memory shard 0 is not answering"), Internal("a bug")])
async def test_a_shard_that_cannot_answer_stops_the_import(error: Exception) -> None:
    r = Routes.direct(LocalTransport(1), refusing_memory(error))
    importer = Importer(r, lambda org: LIMITS, "acme", any_source=False)
    await importer.push(HEADER)
    await importer.push(vector_line("x", [1.0, 0.0]))
    with pytest.raises(type(error)):
        await importer.push(orjson.dumps({"kind": "end", "sessions": 0, "messages": 0, "vectors": 1}))
    assert importer.answer.errors == []


async def test_an_import_refuses_a_blank_text_and_empty_values_as_an_upsert_does() -> None:
    r, _, _ = routes()
    importer = Importer(r, lambda org: LIMITS, "acme", any_source=False)
    await importer.push(HEADER)
    blank = {
        "kind": "vector",
        "namespace": "a",
        "id": "blank",
        "values": [1.0],
        "text": "   ",
        "metadata": {},
    }
    await importer.push(orjson.dumps(blank))
    await importer.push(vector_line("empty", []))
    await importer.push(orjson.dumps({"kind": "end", "sessions": 0, "messages": 0, "vectors": 2}))
    errors = importer.finish()["errors"]
    assert [e["error"] for e in errors] == [
        "vector.text: must not be empty or only whitespace",
        "vector.values: must not be empty",
    ]
