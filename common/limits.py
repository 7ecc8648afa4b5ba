"""Message limits that the device and the cloud must agree on."""
from __future__ import annotations

# gRPC send/receive limit on both ends, bytes: the lossless vgg16_bn partition-0 map at
# 224x224 is 12.8 MB, so 64 MiB leaves room for larger inputs.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
