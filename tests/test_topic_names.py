"""Topic names (edged/topic_names.py and the name fields): a multi-level mqtt.prefix is accepted, and every
way a prefix, station or camera name could break the topic tree is refused by config with the key named."""

from __future__ import annotations

from typing import Any

import pytest

from edged.config import ConfigError, parse_config
from edged.topic_names import check_prefix
from edged.topics import Topics


def _doc(prefix: str = "edged", station: str = "st1", camera: str = "cam1") -> dict[str, Any]:
    return {"station": station, "model": {"bundle": "b"}, "cameras": [{"name": camera, "source": "0"}],
            "mqtt": {"prefix": prefix}}


def _error(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return str(info.value)


def test_an_isa95_prefix_of_several_levels() -> None:
    config = parse_config(_doc(prefix="acme/plant1/press-shop/line3"))
    assert Topics.of(config).reject == "acme/plant1/press-shop/line3/st1/reject"


@pytest.mark.parametrize(("prefix", "why"), [
    ("acme/+/line3", "wildcard '+'"),
    ("acme/#", "wildcard '#'"),
    ("acme/li#ne", "wildcard '#'"),
    ("acme//line3", "empty level"),
    ("/acme/line3", "start or end with '/'"),
    ("acme/line3/", "start or end with '/'"),
    ("$SYS/line3", "start with '$'"),
    ("acme/line\x01", "U+0001"),
    ("acme/line\x7f", "U+007F"),
    ("acme/line 3", "U+0020"),
    ("acme/line\u2028", "U+2028"),
    ("", "must not be empty"),
    ("a" * 300, "at most 256 bytes"),
])
def test_a_bad_prefix_is_refused_naming_the_key(prefix: str, why: str) -> None:
    message = _error(_doc(prefix=prefix))
    assert "mqtt.prefix:" in message and why in message, message


def test_a_nul_in_the_prefix_is_refused_naming_the_key() -> None:
    assert "mqtt.prefix: contains a NUL character" in _error(_doc(prefix="acme\x00line"))


@pytest.mark.parametrize("name", ["st+1", "st#", "a/b", "$st", "st\x01", "", "-st", "st 1"])
def test_a_station_name_that_would_break_a_topic_is_refused(name: str) -> None:
    assert "station:" in _error(_doc(station=name))


@pytest.mark.parametrize("name", ["cam+", "cam#1", "cam/1", "$cam", "cam\t1", "cam\x00"])
def test_a_camera_name_that_would_break_a_topic_is_refused(name: str) -> None:
    assert "cameras[0].name:" in _error(_doc(camera=name))


def test_a_collector_filter_may_use_plus_for_whole_levels_only() -> None:
    assert check_prefix("acme/+/+", wildcards=True) == "acme/+/+"
    for bad in ("acme/line+", "acme/#", "acme//+", "$share/g/acme"):
        with pytest.raises(ValueError):
            check_prefix(bad, wildcards=True)
