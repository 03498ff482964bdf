"""A fast reading of the batch route's items: the plainly valid ones, without the
single route's general parser.

``parse_new_certificate`` accepts member names in any case, collects every fault with
its path and builds a helper object per JSON object; for a batch of 1,000 items that
was the largest part of the event loop's time (about 20 µs an item). ``read_plain_item``
accepts only an item that is plainly valid — exactly the documented member names, none
given twice, every value of its type and within its range, text that is printable
ASCII or passes the parser's own text check — and builds the very ``CertificateContent``
the parser would. Anything else returns None, and the caller hands the item to
``parse_new_certificate``: every problem a client sees is the parser's, byte for byte.
tests/test_batch_items.py holds the two to that: equal values where the fast path
accepts, and never an acceptance where the parser refuses.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final, TypeGuard

from stamp.api.requests import (
    MAX_ID_LENGTH,
    MAX_PERIOD_SECONDS,
    MAX_QUANTITY,
    MAX_UNIX_SECONDS,
    MIN_PERIOD_SECONDS,
    _canonical_uuid,
    _text_problem,
)
from stamp.domain import CERTIFICATE_TYPE_NUMBERS, CERTIFICATE_TYPES, CertificateContent, CertificateKey

_TOP: Final = frozenset({"recipientId", "registryName", "meteringPointId", "certificate"})
_REQUIRED: Final = frozenset({"id", "type", "quantity", "start", "end", "gridArea"})
_ALLOWED: Final = _REQUIRED | {"clearTextAttributes", "hashedAttributes"}
_PAIR: Final = frozenset({"key", "value"})


def _plain(obj: object) -> TypeGuard[dict[str, Any]]:
    """A JSON object with no name given twice (the parser's objects remember those)."""
    return isinstance(obj, dict) and not getattr(obj, "duplicates", ())


def _text(value: object, max_length: int, *, allow_empty: bool = False) -> bool:
    """The parser's text rule; printable ASCII (no control character, always UTF-8)
    is decided without its regular expression."""
    if type(value) is not str:
        return False
    if value.isascii() and value.isprintable() and len(value) <= max_length:
        return allow_empty or not (value == "" or value.isspace())
    return _text_problem(value, max_length, allow_empty=allow_empty) is None


def _certificate_type(value: object) -> int | None:
    if type(value) is int:
        return value if value in CERTIFICATE_TYPES else None
    if type(value) is str:
        return CERTIFICATE_TYPE_NUMBERS.get(value.lower())
    return None


def read_plain_item(
    item: object,
    *,
    registries: Collection[str],
    grid_areas: Collection[str],
    max_attributes: int,
    max_attribute_length: int,
) -> CertificateContent | None:
    """The item as ``parse_new_certificate`` would read it, when it is plainly valid;
    None otherwise (then ask the parser, which says what is wrong, if anything)."""
    if not _plain(item) or item.keys() != _TOP:
        return None
    certificate = item["certificate"]
    if not _plain(certificate):
        return None
    names = certificate.keys()
    if not (names >= _REQUIRED and names <= _ALLOWED):
        return None
    recipient_id = _canonical_uuid(item["recipientId"])
    certificate_id = _canonical_uuid(certificate["id"])
    registry_name = item["registryName"]
    metering_point_id = item["meteringPointId"]
    grid_area = certificate["gridArea"]
    certificate_type = _certificate_type(certificate["type"])
    quantity, start, end = certificate["quantity"], certificate["start"], certificate["end"]
    if (
        recipient_id is None
        or certificate_id is None
        or certificate_type is None
        or not _text(registry_name, MAX_ID_LENGTH)
        or registry_name not in registries
        or not _text(metering_point_id, MAX_ID_LENGTH)
        or not _text(grid_area, MAX_ID_LENGTH)
        or grid_area not in grid_areas
        or type(quantity) is not int
        or type(start) is not int
        or type(end) is not int
        or not 1 <= quantity <= MAX_QUANTITY
        # With the period's bounds, start >= 0 and end <= max imply the rest of the
        # parser's range checks on start and end.
        or start < 0
        or end > MAX_UNIX_SECONDS
        or not MIN_PERIOD_SECONDS <= end - start <= MAX_PERIOD_SECONDS
    ):
        return None

    clear = certificate.get("clearTextAttributes")
    clear_pairs: tuple[tuple[str, str], ...] = ()
    if clear is not None:
        if not _plain(clear):
            return None
        for key, value in clear.items():
            if not _text(key, max_attribute_length):
                return None
            if not _text(value, max_attribute_length, allow_empty=True):
                return None
        clear_pairs = tuple(clear.items())

    hashed = certificate.get("hashedAttributes")
    hashed_pairs: list[tuple[str, str]] = []
    if hashed is not None:
        if type(hashed) is not list:
            return None
        seen: set[str] = set()
        clear_keys = clear if clear is not None else ()
        for entry in hashed:
            if not _plain(entry) or entry.keys() != _PAIR:
                return None
            key, value = entry["key"], entry["value"]
            if (
                not _text(key, max_attribute_length)
                or not _text(value, max_attribute_length, allow_empty=True)
                or key in seen
                or key in clear_keys
            ):
                return None
            seen.add(key)
            hashed_pairs.append((key, value))
    if len(clear_pairs) + len(hashed_pairs) > max_attributes:
        return None

    return CertificateContent(
        key=CertificateKey(registry_name, certificate_id),
        recipient_id=recipient_id,
        metering_point_id=metering_point_id,
        certificate_type=certificate_type,
        quantity=quantity,
        start=start,
        end=end,
        grid_area=grid_area,
        clear_attributes=clear_pairs,
        hashed_attributes=tuple(hashed_pairs),
    )
