"""Parse and build safetensors headers without reading tensor data.

The format: 8 bytes (little-endian u64) giving the header length N, N bytes of JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of
the header) plus an optional ``"__metadata__"`` of string pairs, then the tensor bytes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.dtypes import from_safetensors_name, safetensors_name

# The reference implementation refuses headers above 100 MB; a larger one means a corrupt file.
MAX_HEADER_BYTES = 100_000_000
ALIGNMENT = 8


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor: enough to plan, check and write without its data."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = 0  # absolute byte offset of the data in its file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: Path) -> Header:
    """Read and validate the header of a safetensors file; ``WaError`` (exit 3) when corrupt."""

    def corrupt(why: str) -> WaError:
        return WaError(f"'{path}' is not a valid safetensors file: {why}", ExitCode.BAD_INPUT)

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise corrupt(f"{size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise corrupt(
                    f"header length {n} does not fit the file's {size} bytes "
                    "(truncated, or not a safetensors file)"
                )
            raw = f.read(n)
    except OSError as e:
        raise WaError(f"cannot read '{path}': {e.strerror or e}", ExitCode.BAD_INPUT) from e
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(f"header is not JSON ({e})") from e
    if not isinstance(parsed, dict):
        raise corrupt("header is not a JSON object")
    data_start = 8 + n
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise corrupt("__metadata__ must map strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for key, entry in parsed.items():
        try:
            dtype = from_safetensors_name(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except WaError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"malformed entry for tensor {key!r}") from e
        info = TensorInfo(dtype, shape, data_start + begin)
        if end - begin != info.nbytes or begin < 0 or any(d < 0 for d in shape):
            raise corrupt(
                f"tensor {key!r} spans {end - begin} bytes but {entry['dtype']} {list(shape)} "
                f"needs {info.nbytes}"
            )
        if data_start + end > size:
            raise corrupt(
                f"tensor {key!r} ends at byte {data_start + end} but the file has {size} bytes "
                "(the file is truncated)"
            )
        tensors[key] = info
    return Header(tensors, dict(metadata))


def build_header(
    tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, list[int]]:
    """The header bytes (length prefix included) for tensors laid out back to back in this order.

    Returns the bytes and each tensor's byte size, so a writer can check what it is given.
    """
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = dict(metadata)
    sizes = []
    offset = 0
    for key, dtype, shape in tensors:
        nbytes = math.prod(shape) * dtype.itemsize
        entries[key] = {
            "dtype": safetensors_name(dtype),
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        sizes.append(nbytes)
        offset += nbytes
    body = json.dumps(entries, separators=(",", ":")).encode()
    # Pad with spaces so tensor data starts 8-byte aligned, as the reference writer does.
    body += b" " * (-(len(body) + 8) % ALIGNMENT)
    return struct.pack("<Q", len(body)) + body, sizes
