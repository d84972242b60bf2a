"""The dtype names of the safetensors format, and their torch dtypes."""

from __future__ import annotations

import torch

from wa_cli.errors import ExitCode, WaError

# The dtype names of the safetensors format (its header's "dtype" field).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in [
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
]:
    if hasattr(torch, _attr):
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)
SAFETENSORS_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def from_safetensors_name(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name; ``WaError`` for one torch cannot hold."""
    try:
        return SAFETENSORS_DTYPES[name]
    except KeyError:
        raise WaError(
            f"unsupported tensor dtype {name!r} (supported: {', '.join(SAFETENSORS_DTYPES)})",
            ExitCode.BAD_INPUT,
        ) from None


def safetensors_name(dtype: torch.dtype) -> str:
    """The safetensors header name of a torch dtype."""
    try:
        return SAFETENSORS_NAMES[dtype]
    except KeyError:
        raise WaError(f"dtype {dtype} cannot be written to safetensors", ExitCode.OUTPUT) from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``: how reports, metadata and messages name a dtype.

    Example:
        >>> dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")
