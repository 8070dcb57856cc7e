"""The Memory HTTP contract (shared/ARCHITECTURE.md), on the real server on Ray and in-process."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Api, assert_error


def upsert(api: Api, vectors: list[dict[str, Any]], namespace: str = "default") -> dict[str, Any]:
    response = api.post("/vectors/upsert", json={"namespace": namespace, "vectors": vectors})
    assert response.status_code == 200, response.text
    return dict(response.json())


def query(api: Api, **body: Any) -> dict[str, Any]:
    response = api.post("/vectors/query", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def axis(i: int, dim: int = 4) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(dim)]


def test_values_upsert_then_query_returns_cosine_ranked_matches(api: Api) -> None:
    assert upsert(api, [{"id": f"v{i}", "values": axis(i), "metadata": {"i": i}} for i in range(4)]) == {
        "namespace": "default",
        "upserted": 4,
    }
    found = query(api, vector=[0.9, 0.1, 0, 0], top_k=2)
    assert found["count"] == 2 and [m["id"] for m in found["matches"]] == ["v0", "v1"]
    assert found["matches"][0]["metadata"] == {"i": 0}
    assert found["matches"][0]["relevance"] is None, "relevance is session memory's"
    assert found["matches"][0]["score"] == pytest.approx(0.9 / (0.82**0.5), abs=1e-4)
    assert query(api, vector=[0, 0, 0, 5])["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_texts_are_embedded_and_the_closest_meaning_comes_first(api: Api) -> None:
    upsert(
        api,
        [
            {"id": "cook", "text": "Simmer the tomato sauce with garlic and basil for twenty minutes."},
            {
                "id": "code",
                "text": "The Python function raises a KeyError when the dictionary lacks the key.",
            },
            {"id": "trip", "text": "We booked a train from Paris to Rome and a hotel near the Colosseum."},
        ],
        namespace="notes",
    )
    for question, expected in [
        ("what should I cook for dinner with pasta?", "cook"),
        ("why does my program crash with an exception?", "code"),
        ("plans for travelling in Italy", "trip"),
    ]:
        found = query(api, namespace="notes", query_text=question, top_k=3)
        assert found["matches"][0]["id"] == expected, (question, found)
        assert found["count"] == 3 and all(-1 <= m["score"] <= 1 for m in found["matches"])


def test_texts_are_found_by_their_words_and_by_both_signals(api: Api) -> None:
    upsert(
        api,
        [
            {
                "id": "err",
                "text": "Deploy failed with error E-4471 on the payments service.",
                "metadata": {"t": 1},
            },
            {
                "id": "ok",
                "text": "The payments service deployed cleanly after the retry.",
                "metadata": {"t": 5},
            },
            {"id": "raw", "values": [0.1] * 384},  # no text: never a lexical match
        ],
        namespace="incidents",
    )
    lexical = query(api, namespace="incidents", query_text="E-4471", mode="lexical")
    assert [m["id"] for m in lexical["matches"]] == ["err"] and lexical["matches"][0]["score"] > 0
    hybrid = query(
        api, namespace="incidents", query_text="what broke the payments deploy: E-4471?", mode="hybrid"
    )
    assert hybrid["matches"][0]["id"] == "err" and all(0 <= m["score"] <= 1 for m in hybrid["matches"])
    dense = query(api, namespace="incidents", query_text="payments", top_k=3)  # the default: cosine
    assert {m["id"] for m in dense["matches"]} == {"err", "ok", "raw"}
    ranged = query(api, namespace="incidents", query_text="payments", filter={"t": {"$gte": 2}})
    assert [m["id"] for m in ranged["matches"]] == ["ok"]
    upsert(api, [{"id": "err", "text": "all good now"}], namespace="incidents")
    assert query(api, namespace="incidents", query_text="E-4471", mode="lexical")["matches"] == []


def test_an_existing_id_is_replaced_and_deleted_ids_are_gone(api: Api) -> None:
    upsert(api, [{"id": "a", "values": axis(0), "metadata": {"v": 1}}, {"id": "b", "values": axis(1)}])
    upsert(api, [{"id": "a", "values": axis(2), "metadata": {"v": 2}}])
    found = query(api, vector=axis(2), top_k=10)
    assert found["count"] == 2 and found["matches"][0] == {
        "id": "a",
        "score": pytest.approx(1.0),
        "relevance": None,
        "metadata": {"v": 2},
    }
    deleted = api.post("/vectors/delete", json={"ids": ["a", "never-there"]})
    assert deleted.status_code == 200 and deleted.json() == {"namespace": "default", "deleted": 1}
    assert [m["id"] for m in query(api, vector=axis(2))["matches"]] == ["b"]


def test_a_filter_matches_every_given_metadata_pair(api: Api) -> None:
    upsert(
        api,
        [
            {"id": "1", "values": axis(0), "metadata": {"user": "ann", "kind": "note"}},
            {"id": "2", "values": axis(1), "metadata": {"user": "ann", "kind": "task"}},
            {"id": "3", "values": axis(2), "metadata": {"user": "bob", "kind": "note"}},
        ],
    )
    ids = lambda f: [m["id"] for m in query(api, vector=axis(3), filter=f)["matches"]]  # noqa: E731
    assert sorted(ids({"user": "ann"})) == ["1", "2"]
    assert ids({"user": "ann", "kind": "note"}) == ["1"]
    assert ids({"user": "carl"}) == []


def test_namespaces_are_separate_and_an_unknown_one_is_empty(api: Api) -> None:
    upsert(api, [{"id": "x", "values": axis(0)}], namespace="one")
    upsert(api, [{"id": "x", "values": axis(1, dim=3)}], namespace="two")  # its own dimension
    assert query(api, namespace="one", vector=axis(0))["matches"][0]["id"] == "x"
    assert query(api, namespace="two", vector=axis(1, dim=3))["count"] == 1
    assert query(api, namespace="nothing-here", vector=axis(0)) == {
        "namespace": "nothing-here",
        "matches": [],
        "count": 0,
    }


def test_one_organization_never_matches_anothers_vectors(api: Api, other_api: Api) -> None:
    upsert(api, [{"id": "secret", "values": axis(0), "metadata": {"owner": api.org}}])
    assert query(other_api, vector=axis(0))["count"] == 0
    assert query(other_api, vector=axis(0), filter={"owner": api.org})["count"] == 0
    gone = other_api.post("/vectors/delete", json={"ids": ["secret"]})
    assert gone.json()["deleted"] == 0
    assert query(api, vector=axis(0))["matches"][0]["id"] == "secret"


def test_a_wrong_dimension_is_a_clear_validation_error(api: Api) -> None:
    upsert(api, [{"id": "a", "values": axis(0)}])
    body = assert_error(
        api.post("/vectors/upsert", json={"vectors": [{"id": "b", "values": [1.0, 2.0]}]}),
        422,
        "VALIDATION_ERROR",
    )
    assert body["details"]["expected_dimension"] == 4 and body["details"]["dimension"] == 2
    assert_error(api.post("/vectors/query", json={"vector": [1.0]}), 422, "VALIDATION_ERROR")
    mixed = {"vectors": [{"id": "c", "values": [1.0]}, {"id": "d", "values": [1.0, 0.0]}]}
    assert_error(api.post("/vectors/upsert", json={"namespace": "fresh", **mixed}), 422, "VALIDATION_ERROR")


ONE = {"id": "a", "values": [1.0]}
UP, QUERY, DELETE = "/vectors/upsert", "/vectors/query", "/vectors/delete"
MEMORY_QUERY = {"namespace": "session-memory", "query_text": "a"}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (UP, {"vectors": [{"id": f"v{i}", "values": [1.0]} for i in range(101)]}, 422, "VALIDATION_ERROR"),
        (UP, {"vectors": []}, 422, "VALIDATION_ERROR"),
        (UP, {"vectors": [{"id": "a"}]}, 422, "VALIDATION_ERROR"),
        (UP, {"vectors": [{"id": "a", "text": "x", "values": [1.0]}]}, 422, "VALIDATION_ERROR"),
        (UP, {"vectors": [{"id": "a", "text": "   "}]}, 422, "VALIDATION_ERROR"),
        (UP, {"vectors": [{"id": "a", "values": [0.0, 0.0]}]}, 422, "VALIDATION_ERROR"),
        (UP, {"vectors": [{"id": "", "values": [1.0]}]}, 422, "VALIDATION_ERROR"),
        (UP, {"namespace": "", "vectors": [ONE]}, 422, "VALIDATION_ERROR"),
        (UP, {"namespace": "session-memory", "vectors": [ONE]}, 403, "FORBIDDEN"),
        (UP, {"vectors": [{**ONE, "metadata": {"x": "y" * 20000}}]}, 413, "PAYLOAD_TOO_LARGE"),
        (QUERY, {}, 422, "VALIDATION_ERROR"),
        (QUERY, {"query_text": ""}, 422, "VALIDATION_ERROR"),
        (QUERY, {"query_text": "a", "vector": [1.0]}, 422, "VALIDATION_ERROR"),
        (QUERY, {"vector": []}, 422, "VALIDATION_ERROR"),
        (QUERY, {"vector": [1.0], "top_k": 0}, 422, "VALIDATION_ERROR"),
        (QUERY, {"vector": [1.0], "top_k": 101}, 422, "VALIDATION_ERROR"),
        (QUERY, {"vector": [1.0], "filter": {"a": {"nested": 1}}}, 422, "VALIDATION_ERROR"),
        (QUERY, {"vector": [1.0], "min_relevance": 0.5}, 422, "VALIDATION_ERROR"),  # session-memory's
        (QUERY, {**MEMORY_QUERY, "min_relevance": 1.5}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "min_relevance": "high"}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "as_of": 1.5}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "as_of": "1767225600000"}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "as_of": True}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "as_of": -1}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "as_of": 10**15}, 422, "VALIDATION_ERROR"),  # the future
        (QUERY, {"vector": [1.0], "as_of": 1}, 422, "VALIDATION_ERROR"),  # session-memory's
        (QUERY, {**MEMORY_QUERY, "filter": {"status": "archived"}}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "filter": {"status": {"$in": ["closed", "gone"]}}}, 422, "VALIDATION_ERROR"),
        (QUERY, {**MEMORY_QUERY, "filter": {"status": {"$gt": "a"}}}, 422, "VALIDATION_ERROR"),
        (DELETE, {"ids": []}, 422, "VALIDATION_ERROR"),
        (DELETE, {"namespace": "session-memory", "ids": ["a"]}, 403, "FORBIDDEN"),
        (DELETE, {"ids": [f"x{i}" for i in range(1001)]}, 422, "VALIDATION_ERROR"),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_errors(
    api: Api, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(api.post(path, json=body), status, code)


def test_non_finite_values_are_refused(api: Api) -> None:
    raw = b'{"vectors": [{"id": "a", "values": [1.0, NaN]}]}'  # not JSON at all
    response = api.post("/vectors/upsert", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "VALIDATION_ERROR")
    huge = api.post("/vectors/upsert", json={"vectors": [{"id": "a", "values": [1e39, 1.0]}]})
    assert_error(huge, 422, "VALIDATION_ERROR")  # past float32


def test_the_memory_api_needs_a_key(api: Api) -> None:
    response = api.client.post("/vectors/query", json={"vector": [1.0]})
    assert_error(response, 401, "AUTH_REQUIRED")
