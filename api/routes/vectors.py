"""Memory API: upsert, query and delete vectors in the caller's organization's namespaces."""

from __future__ import annotations

import time

import numpy as np
from starlette.responses import Response

from engine.errors import ValidationFailed
from engine.memory.index import normalized
from engine.memory.ops import DeleteVectors, QueryVectors, UpsertVectors
from engine.memory.sessions import SESSION_MEMORY

from ..deps import CurrentCaller
from ..http import json_response, json_router
from ..limits import (
    check_as_of,
    check_delete_ids,
    check_dimension,
    check_filter,
    check_query_text,
    check_top_k,
    check_vector_fields,
    check_vector_request,
    check_writable_namespace,
)
from ..schemas import DeleteIn, DeleteOut, QueryIn, QueryOut, UpsertIn, UpsertOut

router = json_router("/vectors", "memory")


@router.post("/upsert", response_model=UpsertOut, summary="Add or replace up to 100 vectors")
async def upsert_vectors(body: UpsertIn, caller: CurrentCaller) -> Response:
    namespace = check_writable_namespace(body.namespace)
    check_vector_request(len(body.vectors), caller.memory_limits)
    metadata = tuple(
        check_vector_fields(v, i, caller.memory_limits, caller.limits.max_json_depth)
        for i, v in enumerate(body.vectors)
    )
    texts = [(i, v.text) for i, v in enumerate(body.vectors) if v.text is not None]
    rows: list[np.ndarray | list[float] | None] = [v.values for v in body.vectors]
    if texts:
        embedded = await caller.memory.embed([text for _, text in texts])
        for (i, _), vector in zip(texts, embedded, strict=True):
            rows[i] = vector
    dimensions = {len(row) for row in rows if row is not None}
    if len(dimensions) > 1:
        raise ValidationFailed(
            f"vectors in one request must share a dimension; got {sorted(dimensions)}",
            {"field": "vectors", "dimensions": sorted(dimensions)},
            "Texts are embedded to the embedder's dimension; send values of that length, or use "
            "another namespace.",
        )
    vectors = normalized(np.asarray(rows, dtype=np.float64))
    ids = tuple(v.id for v in body.vectors)
    texts_of = tuple(v.text for v in body.vectors) if texts else ()
    op = UpsertVectors(
        caller.org, namespace, ids, vectors, metadata, caller.limits.max_vectors_per_namespace, texts_of
    )
    result, headers = await caller.write_memory(op)
    return json_response({"namespace": namespace, **result}, headers=headers)


@router.post(
    "/query",
    response_model=QueryOut,
    summary="The best matches for a text or a vector: by meaning, by words, or both",
)
async def query_vectors(body: QueryIn, caller: CurrentCaller) -> Response:
    top_k = check_top_k(body.top_k, caller.memory_limits)
    check_dimension(body.vector, "vector", caller.memory_limits)
    check_query_text(body.query_text, caller.memory_limits)
    where = check_filter(body.filter, body.namespace)
    as_of = check_as_of(body.as_of, int(time.time() * 1000))
    sessions = body.namespace == SESSION_MEMORY
    mode = body.mode or ("hybrid" if sessions and body.query_text is not None else "dense")
    vector = None
    if mode != "lexical" or sessions:  # session memory's relevance is by meaning in every mode
        raw = (await caller.memory.embed([body.query_text])) if body.query_text is not None else [body.vector]
        vector = normalized(np.asarray(raw, dtype=np.float64))[0]
    query = QueryVectors(
        caller.org, body.namespace, vector, top_k, where, body.query_text, mode, body.min_relevance, as_of
    )
    matches = await caller.memory.submit(caller.org, query)
    out = [{"id": m.id, "score": m.score, "relevance": m.relevance, "metadata": m.metadata} for m in matches]
    return json_response({"namespace": body.namespace, "matches": out, "count": len(out)})


@router.post("/delete", response_model=DeleteOut, summary="Delete vectors by id")
async def delete_vectors(body: DeleteIn, caller: CurrentCaller) -> Response:
    namespace = check_writable_namespace(body.namespace)
    op = DeleteVectors(caller.org, namespace, check_delete_ids(body.ids, caller.memory_limits))
    result, headers = await caller.write_memory(op)
    return json_response({"namespace": namespace, **result}, headers=headers)
