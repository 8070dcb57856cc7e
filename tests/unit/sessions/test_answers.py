"""The gateway's answers built from JSON a shard encoded are the JSON of the values themselves."""

from __future__ import annotations

import orjson
import pytest

from engine.sessions.answers import EncodedJSON, encoded, json_array, json_object, only_element

VIEWS = [{"id": "a", "name": "héllo \u2028"}, {"id": "b", "context": {"n": [1, 2.5, None]}}]


def test_an_array_of_encoded_values_is_their_array() -> None:
    assert json_array(encoded(view) for view in VIEWS) == orjson.dumps(VIEWS)
    assert json_array([]) == b"[]"


def test_an_object_of_encoded_members_keeps_their_order() -> None:
    body = json_object(sessions=json_array(map(encoded, VIEWS)), count=encoded(2), next_cursor=encoded(None))
    assert body == orjson.dumps({"sessions": VIEWS, "count": 2, "next_cursor": None})
    assert json_object() == b"{}"


def test_the_one_element_of_an_array_is_its_json() -> None:
    assert only_element(encoded([VIEWS[0]])) == orjson.dumps(VIEWS[0])


def test_only_an_array_has_an_element() -> None:
    with pytest.raises(ValueError, match="not an encoded JSON array"):
        only_element(EncodedJSON(b'{"a": 1}'))
