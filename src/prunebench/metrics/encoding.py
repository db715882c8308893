"""Model size on disk: the dense checkpoint, and a sparse encoding that drops zero weights.

`size_dense_bytes` is what `torch.save` of the state dict writes: the size a user ships today.
`size_sparse_bytes` is what an unstructured-pruned model could ship as: per tensor, a bitmask
of its nonzero elements (`np.packbits`, 1 bit per element) and the nonzero elements' raw
bytes; the payload is then compressed (zlib or lzma). A pruned model shrinks on disk only
through such an encoding, so this is the number that answers "did it get smaller?".

Format (no pickle, so decoding runs no code):

    b"PBSPARSE" | uint8 version | uint64 little-endian header length | JSON header | payload

The JSON header names the codec and lists the tensors in order, each with name, dtype, shape
and the byte lengths of its bitmask and values; the payload is the codec-compressed
concatenation of every tensor's bitmask then values. "Zero" means all bytes zero, so -0.0 and
NaN are kept as values and decoding is bitwise exact. Raw bytes are in this machine's byte
order (little-endian on every platform torch ships for).
"""

from __future__ import annotations

import io
import json
import lzma
import struct
import zlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

MAGIC = b"PBSPARSE"
VERSION = 1
CODECS = {
    "zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
    "lzma": (lambda b: lzma.compress(b, preset=6), lzma.decompress),
}
_HEADER_LENGTH = struct.Struct("<BQ")


def size_dense_bytes(state_dict: Mapping[str, Tensor]) -> int:
    """Bytes `torch.save` writes for the state dict (the checkpoint as usually shipped)."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getbuffer().nbytes


def size_sparse_bytes(state_dict: Mapping[str, Tensor], codec: str = "zlib") -> int:
    """Bytes of `encode_sparse(state_dict, codec)`."""
    return len(encode_sparse(state_dict, codec))


def _element_bytes(tensor: Tensor) -> np.ndarray:
    """The tensor's raw bytes as a (numel, itemsize) uint8 array (any dtype, bfloat16 too)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), flat.element_size())


def _encode_tensor(tensor: Tensor) -> tuple[bytes, bytes]:
    """(packed bitmask of elements with any nonzero byte, those elements' bytes)."""
    elements = _element_bytes(tensor)
    nonzero = elements.any(axis=1)
    return np.packbits(nonzero).tobytes(), elements[nonzero].tobytes()


def _decode_tensor(entry: dict, bitmask: bytes, values: bytes) -> Tensor:
    dtype = getattr(torch, entry["dtype"])
    numel = int(np.prod(entry["shape"], dtype=np.int64))
    itemsize = torch.empty((), dtype=dtype).element_size()
    nonzero = np.unpackbits(np.frombuffer(bitmask, dtype=np.uint8), count=numel).astype(bool)
    elements = np.zeros((numel, itemsize), dtype=np.uint8)
    elements[nonzero] = np.frombuffer(values, dtype=np.uint8).reshape(-1, itemsize)
    return torch.from_numpy(elements.reshape(-1)).view(dtype).reshape(entry["shape"])


def encode_sparse(state_dict: Mapping[str, Tensor], codec: str = "zlib") -> bytes:
    """Encode a state dict of tensors as bitmask + nonzero values; see the module docstring."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; allowed: {', '.join(CODECS)}")
    entries, chunks = [], []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        bitmask, values = _encode_tensor(tensor)
        entries.append({
            "name": name,
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "bitmask_bytes": len(bitmask),
            "values_bytes": len(values),
        })
        chunks += [bitmask, values]
    header = json.dumps({"codec": codec, "tensors": entries}).encode()
    payload = CODECS[codec][0](b"".join(chunks))
    return MAGIC + _HEADER_LENGTH.pack(VERSION, len(header)) + header + payload


def decode_sparse(blob: bytes) -> dict[str, Tensor]:
    """Invert `encode_sparse`: the same names, dtypes, shapes and bits."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a sparse encoding: bad magic bytes")
    start = len(MAGIC) + _HEADER_LENGTH.size
    version, header_length = _HEADER_LENGTH.unpack(blob[len(MAGIC):start])
    if version != VERSION:
        raise ValueError(f"sparse encoding version {version}, this decoder reads {VERSION}")
    header = json.loads(blob[start:start + header_length])
    payload = memoryview(CODECS[header["codec"]][1](blob[start + header_length:]))
    out, offset = {}, 0
    for entry in header["tensors"]:
        bitmask_end = offset + entry["bitmask_bytes"]
        values_end = bitmask_end + entry["values_bytes"]
        out[entry["name"]] = _decode_tensor(
            entry, payload[offset:bitmask_end], payload[bitmask_end:values_end])
        offset = values_end
    return out
