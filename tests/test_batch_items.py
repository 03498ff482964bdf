"""The batch route's fast reading of an item (stamp/api/batch_items.py) against the
single route's parser: where the fast path accepts, it builds the parser's very value;
where the parser refuses, the fast path never accepts (the item then goes to the
parser, whose problem the client sees)."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamp.api.batch_items import read_plain_item
from stamp.api.problems import ValidationProblem
from stamp.api.requests import parse_json_object, parse_new_certificate, request_digest
from stamp.domain import CertificateContent
from stamp.load.driver import CertificateFactory

LIMITS: dict[str, Any] = {
    "registries": {"Narnia": "127.0.0.1:1"}.keys(),
    "grid_areas": {"DK1": None, "DK2": None}.keys(),
    "max_attributes": 4,
    "max_attribute_length": 40,
}


def plain() -> dict[str, Any]:
    return {
        "recipientId": str(uuid.uuid4()),
        "registryName": "Narnia",
        "meteringPointId": "571234567890123456",
        "certificate": {
            "id": str(uuid.uuid4()),
            "type": "production",
            "quantity": 1234,
            "start": 1_735_689_600,
            "end": 1_735_693_200,
            "gridArea": "DK1",
            "clearTextAttributes": {"fuelCode": "F01040100", "techCode": "T010000"},
            "hashedAttributes": [{"key": "assetId", "value": "571234567890123456"}],
        },
    }


def parser(item: object) -> CertificateContent | None:
    try:
        return parse_new_certificate(item, **LIMITS)
    except ValidationProblem:
        return None


def assert_agree(item: object) -> CertificateContent | None:
    """The fast path's answer, having checked it against the parser's."""
    fast = read_plain_item(item, **LIMITS)
    if fast is not None:
        assert fast == parser(item), item
        # The stored digest decides identical re-posts: it must not depend on the path.
        assert request_digest(fast) == request_digest(parse_new_certificate(item, **LIMITS))
    return fast


def through_json(item: object) -> object:
    """As the route sees it: parsed from bytes by the strict decoder (written with
    escapes, so that a lone surrogate survives the trip)."""
    return parse_json_object(json.dumps({"item": item}).encode())["item"]


def test_plain_items_take_the_fast_path_and_read_as_the_parser_reads_them() -> None:
    factory = CertificateFactory([str(uuid.uuid4()) for _ in range(7)])
    items = [through_json(plain()), *(parse_json_object(factory.body(i)[2]) for i in range(50))]
    bare = plain()
    del bare["certificate"]["clearTextAttributes"], bare["certificate"]["hashedAttributes"]
    nulls = plain()
    nulls["certificate"]["clearTextAttributes"] = None
    nulls["certificate"]["hashedAttributes"] = None
    for item in [*items, bare, nulls]:
        assert assert_agree(item) is not None, item


def mutate(item: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(item)
    target = out
    for name in path[:-1]:
        target = target[name]
    if value is DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return out


DELETE = object()

# Each is refused by the parser, or read by it with a fold the fast path leaves to it.
VARIANTS: list[tuple[tuple[str, ...], Any]] = [
    (("recipientId",), "not-a-uuid"),
    (("recipientId",), None),
    (("recipientId",), DELETE),
    (("recipientId",), str(uuid.uuid4()).upper()),  # valid: the parser lowers it
    (("registryName",), "Atlantis"),
    (("registryName",), ""),
    (("registryName",), 7),
    (("meteringPointId",), ""),
    (("meteringPointId",), "   "),
    (("meteringPointId",), "57\x1b[2J"),
    (("meteringPointId",), "57\u0085"),
    (("meteringPointId",), "x" * 257),
    (("meteringPointId",), "x" * 256),  # valid, the longest
    (("meteringPointId",), "Målepunkt 7"),  # valid, not ASCII
    (("meteringPointId",), "\ud800"),
    (("meteringPointId",), 571234567890123456),
    (("certificate",), None),
    (("certificate",), []),
    (("certificate", "id"), "nope"),
    (("certificate", "type"), "Production"),  # valid: case-insensitive word
    (("certificate", "type"), 1),
    (("certificate", "type"), 3),
    (("certificate", "type"), True),
    (("certificate", "type"), "wind"),
    (("certificate", "quantity"), 0),
    (("certificate", "quantity"), 2**32),
    (("certificate", "quantity"), 2**32 - 1),
    (("certificate", "quantity"), 12.0),
    (("certificate", "quantity"), "12"),
    (("certificate", "quantity"), False),
    (("certificate", "start"), -3600),
    (("certificate", "start"), 1_735_693_200),
    (("certificate", "start"), 1_735_693_200 - 59),
    (("certificate", "start"), 1_735_693_200 - 60),
    (("certificate", "start"), 1_735_689_599),
    (("certificate", "end"), 253_402_300_800),
    (("certificate", "gridArea"), "DK9"),
    (("certificate", "gridArea"), "dk1"),
    (("certificate", "clearTextAttributes"), []),
    (("certificate", "clearTextAttributes"), {"": "x"}),
    (("certificate", "clearTextAttributes"), {"k": ""}),  # valid: values may be empty
    (("certificate", "clearTextAttributes"), {"k": 1}),
    (("certificate", "clearTextAttributes"), {"k": "x" * 41}),
    (("certificate", "clearTextAttributes"), {"k\t": "x"}),
    (("certificate", "clearTextAttributes"), {"a": "1", "b": "2", "c": "3", "d": "4"}),
    (("certificate", "hashedAttributes"), {}),
    (("certificate", "hashedAttributes"), [{"key": "assetId"}]),
    (("certificate", "hashedAttributes"), [{"key": "a", "value": "1", "extra": 1}]),
    (("certificate", "hashedAttributes"), [{"Key": "a", "Value": "1"}]),
    (("certificate", "hashedAttributes"), [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]),
    (("certificate", "hashedAttributes"), [{"key": "fuelCode", "value": "1"}]),
    (("certificate", "hashedAttributes"), [{"key": "", "value": "1"}]),
    (("certificate", "hashedAttributes"), [{"key": "a", "value": ""}]),
    (("certificate", "hashedAttributes"), ["a"]),
    (("certificate", "hashedAttributes"), [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]),
    (("certificate", "hashedAttributes"), [{"key": f"k{i}", "value": "1"} for i in range(3)]),
    (("certificate", "extra"), 1),
    (("certificate", "Quantity"), 12),
    (("RecipientId",), str(uuid.uuid4())),
    (("extra",), None),
]


@pytest.mark.parametrize(("path", "value"), VARIANTS, ids=lambda v: repr(v)[:40])
def test_every_variant_is_read_alike_or_left_to_the_parser(path: tuple[str, ...], value: Any) -> None:
    item = mutate(plain(), path, value)
    fast = assert_agree(item)
    if parser(item) is None:
        assert fast is None
    assert assert_agree(through_json(item)) == fast


@pytest.mark.parametrize(
    ("start", "end"),
    [(-1800, 1800), (0, 3600), (253_402_300_799 - 3600, 253_402_300_799), (253_402_300_000, 253_402_300_800)],
)
def test_the_period_bounds_are_the_parsers(start: int, end: int) -> None:
    item = mutate(mutate(plain(), ("certificate", "start"), start), ("certificate", "end"), end)
    fast = assert_agree(item)
    assert (fast is None) == (parser(item) is None)


def test_a_name_given_twice_is_left_to_the_parser() -> None:
    body = orjson.dumps(plain())
    for original, twice in [
        (b'"quantity":1234', b'"quantity":1234,"quantity":1234'),
        (b'"registryName":"Narnia"', b'"registryName":"Narnia","registryName":"Narnia"'),
        (b'"fuelCode":"F01040100"', b'"fuelCode":"F01040100","fuelCode":"F01040100"'),
        (b'"key":"assetId"', b'"key":"assetId","key":"assetId"'),
    ]:
        assert original in body
        item = parse_json_object(body.replace(original, twice))
        assert read_plain_item(item, **LIMITS) is None
        assert parser(item) is None


def test_a_non_object_item_is_left_to_the_parser() -> None:
    for item in [None, [], "x", 1, ["not", "a", "certificate"]]:
        assert read_plain_item(item, **LIMITS) is None


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["Narnia", "DK1", "production", "consumption", "fuelCode", str(uuid.uuid4())]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
PATHS = st.sampled_from(
    [
        ("recipientId",),
        ("registryName",),
        ("meteringPointId",),
        ("certificate",),
        ("certificate", "id"),
        ("certificate", "type"),
        ("certificate", "quantity"),
        ("certificate", "start"),
        ("certificate", "end"),
        ("certificate", "gridArea"),
        ("certificate", "clearTextAttributes"),
        ("certificate", "hashedAttributes"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(PATHS, JSON_VALUES | st.just(DELETE)), min_size=1, max_size=3))
def test_random_changes_never_make_the_two_disagree(changes: list[tuple[tuple[str, ...], Any]]) -> None:
    item = plain()
    for path, value in changes:
        if len(path) > 1 and not isinstance(item.get("certificate"), dict):
            continue
        item = mutate(item, path, value)
    fast = assert_agree(item)
    if parser(item) is None:
        assert fast is None
