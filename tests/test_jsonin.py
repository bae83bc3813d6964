"""JSON from outside is parsed only when shallow: depth counted first, strings skipped."""

from __future__ import annotations

import json

import pytest

from edged import jsonin


@pytest.mark.parametrize(("text", "depth"), [
    ('{"a": 1}', 1), ('[[1], {"b": [2]}]', 3), ('"[[[[{{{{"', 0), ('{"s": "a\\"[[[[", "t": [1]}', 2),
    ('{"s": "\\\\", "t": [[1]]}', 3), ("", 0),
])
def test_depth_counts_arrays_and_objects_not_brackets_in_strings(text: str, depth: int) -> None:
    assert jsonin.deepest(text) == depth


def test_deep_json_is_refused_before_the_parser_and_shallow_json_parses() -> None:
    ok = "[" * jsonin.MAX_NESTING + "]" * jsonin.MAX_NESTING
    assert jsonin.loads(ok) is not None
    with pytest.raises(jsonin.TooDeep, match="deeper than 32"):
        jsonin.loads("[" * (jsonin.MAX_NESTING + 1) + "]" * (jsonin.MAX_NESTING + 1))
    many = json.dumps({"ids": list(range(50)), "names": ["[x]"] * 40})  # many brackets, shallow
    assert jsonin.loads(many)["ids"][49] == 49
    assert issubclass(jsonin.TooDeep, ValueError)  # callers that catch the parser's ValueError catch it too
    with pytest.raises(jsonin.TooDeep):  # the fuzz test's trigger: refused, never a RecursionError at the limit
        jsonin.loads('{"part_id": "deep", "t": ' + "[" * 4096 + "}")

