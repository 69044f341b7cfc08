from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Next(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Invocation(_message.Message):
    __slots__ = ("request_id", "deadline_ms", "invoked_function_arn", "trace_id", "client_context", "cognito_identity", "payload", "tail_logs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    INVOKED_FUNCTION_ARN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    COGNITO_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TAIL_LOGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deadline_ms: int
    invoked_function_arn: str
    trace_id: str
    client_context: str
    cognito_identity: str
    payload: bytes
    tail_logs: bool
    def __init__(self, request_id: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., invoked_function_arn: _Optional[str] = ..., trace_id: _Optional[str] = ..., client_context: _Optional[str] = ..., cognito_identity: _Optional[str] = ..., payload: _Optional[bytes] = ..., tail_logs: _Optional[bool] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("duration_ms", "init_duration_ms", "max_memory_used_mb", "memory_size_mb", "restore_duration_ms")
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    INIT_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    RESTORE_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    duration_ms: float
    init_duration_ms: float
    max_memory_used_mb: int
    memory_size_mb: int
    restore_duration_ms: float
    def __init__(self, duration_ms: _Optional[float] = ..., init_duration_ms: _Optional[float] = ..., max_memory_used_mb: _Optional[int] = ..., memory_size_mb: _Optional[int] = ..., restore_duration_ms: _Optional[float] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("request_id", "payload", "report", "log_tail", "and_next")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    AND_NEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    payload: bytes
    report: Report
    log_tail: bytes
    and_next: bool
    def __init__(self, request_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., log_tail: _Optional[bytes] = ..., and_next: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("request_id", "error_type", "payload", "report", "log_tail", "and_next")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    AND_NEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    error_type: str
    payload: bytes
    report: Report
    log_tail: bytes
    and_next: bool
    def __init__(self, request_id: _Optional[str] = ..., error_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., log_tail: _Optional[bytes] = ..., and_next: _Optional[bool] = ...) -> None: ...

class InitError(_message.Message):
    __slots__ = ("error_type", "payload")
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    error_type: str
    payload: bytes
    def __init__(self, error_type: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Decline(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("next", "response", "error", "init_error", "decline")
    NEXT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INIT_ERROR_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    next: Next
    response: Response
    error: Error
    init_error: InitError
    decline: Decline
    def __init__(self, next: _Optional[_Union[Next, _Mapping]] = ..., response: _Optional[_Union[Response, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., init_error: _Optional[_Union[InitError, _Mapping]] = ..., decline: _Optional[_Union[Decline, _Mapping]] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Spawn(_message.Message):
    __slots__ = ("instance_ids",)
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    instance_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, instance_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GatewayMessage(_message.Message):
    __slots__ = ("invocation", "stop", "spawn")
    INVOCATION_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SPAWN_FIELD_NUMBER: _ClassVar[int]
    invocation: Invocation
    stop: Stop
    spawn: Spawn
    def __init__(self, invocation: _Optional[_Union[Invocation, _Mapping]] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ..., spawn: _Optional[_Union[Spawn, _Mapping]] = ...) -> None: ...

class PoolHello(_message.Message):
    __slots__ = ("namespace", "runtime", "pod", "function", "version")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    runtime: str
    pod: str
    function: str
    version: str
    def __init__(self, namespace: _Optional[str] = ..., runtime: _Optional[str] = ..., pod: _Optional[str] = ..., function: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Specialise(_message.Message):
    __slots__ = ("sandbox", "credential", "slots", "files")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    sandbox: str
    credential: str
    slots: int
    files: _containers.ScalarMap[str, str]
    def __init__(self, sandbox: _Optional[str] = ..., credential: _Optional[str] = ..., slots: _Optional[int] = ..., files: _Optional[_Mapping[str, str]] = ...) -> None: ...
