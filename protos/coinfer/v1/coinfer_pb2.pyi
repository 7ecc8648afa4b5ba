from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_QUANTIZED: _ClassVar[Encoding]
    ENCODING_FLOAT32: _ClassVar[Encoding]

class Tail(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TAIL_UNSPECIFIED: _ClassVar[Tail]
    TAIL_UNMODIFIED: _ClassVar[Tail]
    TAIL_BANK: _ClassVar[Tail]
    TAIL_ARTIFACT: _ClassVar[Tail]
    TAIL_FULL: _ClassVar[Tail]
ENCODING_UNSPECIFIED: Encoding
ENCODING_QUANTIZED: Encoding
ENCODING_FLOAT32: Encoding
TAIL_UNSPECIFIED: Tail
TAIL_UNMODIFIED: Tail
TAIL_BANK: Tail
TAIL_ARTIFACT: Tail
TAIL_FULL: Tail

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Partition(_message.Message):
    __slots__ = ("index", "channels", "height", "width", "after_pooling", "cloud_tail_s")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    AFTER_POOLING_FIELD_NUMBER: _ClassVar[int]
    CLOUD_TAIL_S_FIELD_NUMBER: _ClassVar[int]
    index: int
    channels: int
    height: int
    width: int
    after_pooling: bool
    cloud_tail_s: float
    def __init__(self, index: _Optional[int] = ..., channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., after_pooling: _Optional[bool] = ..., cloud_tail_s: _Optional[float] = ...) -> None: ...

class ArtifactInfo(_message.Message):
    __slots__ = ("sha256", "scheme", "channel_indices")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_INDICES_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    scheme: str
    channel_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sha256: _Optional[str] = ..., scheme: _Optional[str] = ..., channel_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class BankScheme(_message.Message):
    __slots__ = ("scheme", "channel_indices", "top1_error", "accuracy_loss")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_INDICES_FIELD_NUMBER: _ClassVar[int]
    TOP1_ERROR_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    channel_indices: _containers.RepeatedScalarFieldContainer[int]
    top1_error: float
    accuracy_loss: float
    def __init__(self, scheme: _Optional[str] = ..., channel_indices: _Optional[_Iterable[int]] = ..., top1_error: _Optional[float] = ..., accuracy_loss: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "num_classes", "input_shape", "partitions", "cloud_full_model_s", "artifacts", "weights_sha256", "bank", "base_top1_error", "bank_recipe")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FULL_MODEL_S_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    BANK_FIELD_NUMBER: _ClassVar[int]
    BASE_TOP1_ERROR_FIELD_NUMBER: _ClassVar[int]
    BANK_RECIPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_classes: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    partitions: _containers.RepeatedCompositeFieldContainer[Partition]
    cloud_full_model_s: float
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactInfo]
    weights_sha256: str
    bank: _containers.RepeatedCompositeFieldContainer[BankScheme]
    base_top1_error: float
    bank_recipe: str
    def __init__(self, name: _Optional[str] = ..., num_classes: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., partitions: _Optional[_Iterable[_Union[Partition, _Mapping]]] = ..., cloud_full_model_s: _Optional[float] = ..., artifacts: _Optional[_Iterable[_Union[ArtifactInfo, _Mapping]]] = ..., weights_sha256: _Optional[str] = ..., bank: _Optional[_Iterable[_Union[BankScheme, _Mapping]]] = ..., base_top1_error: _Optional[float] = ..., bank_recipe: _Optional[str] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "models", "max_message_bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    max_message_bytes: int
    def __init__(self, version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class FeatureMap(_message.Message):
    __slots__ = ("partition", "channels", "height", "width", "encoding", "bits", "channel_indices", "offsets", "scales", "payload")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_INDICES_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    partition: int
    channels: int
    height: int
    width: int
    encoding: Encoding
    bits: int
    channel_indices: _containers.RepeatedScalarFieldContainer[int]
    offsets: _containers.RepeatedScalarFieldContainer[float]
    scales: _containers.RepeatedScalarFieldContainer[float]
    payload: bytes
    def __init__(self, partition: _Optional[int] = ..., channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., bits: _Optional[int] = ..., channel_indices: _Optional[_Iterable[int]] = ..., offsets: _Optional[_Iterable[float]] = ..., scales: _Optional[_Iterable[float]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("channels", "height", "width", "payload")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    payload: bytes
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("request_id", "model", "artifact_sha256", "feature_map", "image", "bank_scheme")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    FEATURE_MAP_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BANK_SCHEME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    artifact_sha256: str
    feature_map: FeatureMap
    image: Image
    bank_scheme: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., feature_map: _Optional[_Union[FeatureMap, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., bank_scheme: _Optional[str] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "logits", "top1", "decode_s", "tail_s", "received_bytes", "tail")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    TAIL_S_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    logits: _containers.RepeatedScalarFieldContainer[float]
    top1: int
    decode_s: float
    tail_s: float
    received_bytes: int
    tail: Tail
    def __init__(self, request_id: _Optional[str] = ..., logits: _Optional[_Iterable[float]] = ..., top1: _Optional[int] = ..., decode_s: _Optional[float] = ..., tail_s: _Optional[float] = ..., received_bytes: _Optional[int] = ..., tail: _Optional[_Union[Tail, str]] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("payload", "response_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    response_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("payload", "received_bytes", "server_receive_ns", "server_send_ns")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_RECEIVE_NS_FIELD_NUMBER: _ClassVar[int]
    SERVER_SEND_NS_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    received_bytes: int
    server_receive_ns: int
    server_send_ns: int
    def __init__(self, payload: _Optional[bytes] = ..., received_bytes: _Optional[int] = ..., server_receive_ns: _Optional[int] = ..., server_send_ns: _Optional[int] = ...) -> None: ...
