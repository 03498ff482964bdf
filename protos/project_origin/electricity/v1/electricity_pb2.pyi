import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.project_origin.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GranularCertificateType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID: _ClassVar[GranularCertificateType]
    CONSUMPTION: _ClassVar[GranularCertificateType]
    PRODUCTION: _ClassVar[GranularCertificateType]

class AttributeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLEARTEXT: _ClassVar[AttributeType]
    HASHED: _ClassVar[AttributeType]

class KeyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    Secp256k1: _ClassVar[KeyType]
    ED25519: _ClassVar[KeyType]
INVALID: GranularCertificateType
CONSUMPTION: GranularCertificateType
PRODUCTION: GranularCertificateType
CLEARTEXT: AttributeType
HASHED: AttributeType
Secp256k1: KeyType
ED25519: KeyType

class IssuedEvent(_message.Message):
    __slots__ = ("certificate_id", "type", "period", "grid_area", "asset_id_hash", "quantity_commitment", "owner_public_key", "attributes")
    CERTIFICATE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    GRID_AREA_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_HASH_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    OWNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    certificate_id: _common_pb2.FederatedStreamId
    type: GranularCertificateType
    period: DateInterval
    grid_area: str
    asset_id_hash: bytes
    quantity_commitment: Commitment
    owner_public_key: PublicKey
    attributes: _containers.RepeatedCompositeFieldContainer[Attribute]
    def __init__(self, certificate_id: _Optional[_Union[_common_pb2.FederatedStreamId, _Mapping]] = ..., type: _Optional[_Union[GranularCertificateType, str]] = ..., period: _Optional[_Union[DateInterval, _Mapping]] = ..., grid_area: _Optional[str] = ..., asset_id_hash: _Optional[bytes] = ..., quantity_commitment: _Optional[_Union[Commitment, _Mapping]] = ..., owner_public_key: _Optional[_Union[PublicKey, _Mapping]] = ..., attributes: _Optional[_Iterable[_Union[Attribute, _Mapping]]] = ...) -> None: ...

class WithdrawnEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DateInterval(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Commitment(_message.Message):
    __slots__ = ("content", "range_proof")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    RANGE_PROOF_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    range_proof: bytes
    def __init__(self, content: _Optional[bytes] = ..., range_proof: _Optional[bytes] = ...) -> None: ...

class PublicKey(_message.Message):
    __slots__ = ("content", "type")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    type: KeyType
    def __init__(self, content: _Optional[bytes] = ..., type: _Optional[_Union[KeyType, str]] = ...) -> None: ...

class Attribute(_message.Message):
    __slots__ = ("key", "value", "type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    type: AttributeType
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., type: _Optional[_Union[AttributeType, str]] = ...) -> None: ...
