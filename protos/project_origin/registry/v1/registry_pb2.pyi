from protos.project_origin.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransactionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[TransactionState]
    PENDING: _ClassVar[TransactionState]
    FAILED: _ClassVar[TransactionState]
    COMMITTED: _ClassVar[TransactionState]
    FINALIZED: _ClassVar[TransactionState]
UNKNOWN: TransactionState
PENDING: TransactionState
FAILED: TransactionState
COMMITTED: TransactionState
FINALIZED: TransactionState

class SendTransactionsRequest(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class SubmitTransactionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTransactionStatusRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetTransactionStatusResponse(_message.Message):
    __slots__ = ("status", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: TransactionState
    message: str
    def __init__(self, status: _Optional[_Union[TransactionState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class GetStreamTransactionsRequest(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: _common_pb2.Uuid
    def __init__(self, stream_id: _Optional[_Union[_common_pb2.Uuid, _Mapping]] = ...) -> None: ...

class GetStreamTransactionsResponse(_message.Message):
    __slots__ = ("transactions",)
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ...) -> None: ...

class TransactionHeader(_message.Message):
    __slots__ = ("federated_stream_id", "payload_type", "payload_sha512", "nonce")
    FEDERATED_STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA512_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    federated_stream_id: _common_pb2.FederatedStreamId
    payload_type: str
    payload_sha512: bytes
    nonce: str
    def __init__(self, federated_stream_id: _Optional[_Union[_common_pb2.FederatedStreamId, _Mapping]] = ..., payload_type: _Optional[str] = ..., payload_sha512: _Optional[bytes] = ..., nonce: _Optional[str] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("header", "header_signature", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    HEADER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: TransactionHeader
    header_signature: bytes
    payload: bytes
    def __init__(self, header: _Optional[_Union[TransactionHeader, _Mapping]] = ..., header_signature: _Optional[bytes] = ..., payload: _Optional[bytes] = ...) -> None: ...
