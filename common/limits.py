"""Message limits and call metadata that the device and the cloud must agree on."""
from __future__ import annotations

# gRPC send/receive limit on both ends, bytes: the lossless vgg16_bn partition-0 map at
# 224x224 is 12.8 MB, so 64 MiB leaves room for larger inputs.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# call metadata: sha256 of the weights the device's head runs ("" or absent: not said). The
# cloud refuses split frames from a head of other weights than it serves (FAILED_PRECONDITION,
# both hashes named). HPACK indexes the repeated value: about one byte per call after the first.
WEIGHTS_METADATA_KEY = "x-coinfer-weights-sha256"
