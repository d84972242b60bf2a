"""Parse and build safetensors headers without reading tensor data.

The format: 8 bytes (little-endian u64) giving the header length N, N bytes of JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of
the header) plus an optional ``"__metadata__"`` of string pairs, then the tensor bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from wa_cli.errors import ExitCode, WaError
from wa_cli.gc_pause import paused_gc
from wa_cli.io.descriptors import open_regular, pread_exact
from wa_cli.io.dtypes import SAFETENSORS_DTYPES, from_safetensors_name, safetensors_name
from wa_cli.io.hostile import JsonLimitError, json_reason, parse_json

# The reference implementation refuses headers above 100 MB; a larger one means a corrupt file.
MAX_HEADER_BYTES = 100_000_000
ALIGNMENT = 8
# No checkpoint's tensor has more; a 100 MB header of one shape [1, 1, ...] (49 million dims)
# made 4 GB of Python objects downstream (the library itself takes 2 GB to hold it).
MAX_DIMS = 1024
_INT64 = 2**63 - 1
_FIELDS = (b'"dtype"', b'"shape"', b'"data_offsets"')


class TensorInfo(NamedTuple):
    """What a header says about one tensor: enough to plan, check and write without its data.

    A named tuple rather than a dataclass: a header of 20,000 tensors makes 20,000 of them, and
    a tuple is built in half the time.
    """

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
    # Headers with the same token list the same tensors, dtypes, shapes and relative offsets
    # (their tensor entries are byte for byte the same); None when not known.
    layout: object | None = None


class LayoutMemo:
    """The tensor entries of headers already validated, while a command opens its inputs.

    Every checkpoint of a run lists its tensors byte for byte as the others do; only the
    ``__metadata__`` object in front (a step, a date) differs. A header whose entries repeat a
    validated one's is not parsed and checked again: its metadata is parsed alone and the
    tensors are the earlier file's, moved by the difference in header length (a 20,000-tensor
    header: 60 ms to parse and check, under 10 ms this way). Holds at most ``limit`` bytes.
    """

    def __init__(self, limit: int = 64 * 2**20):
        self.limit = limit
        self.held = 0
        self.seen: dict[str, _Validated] = {}

    def read(
        self, raw: bytes, data_start: int, data_size: int, corrupt: Callable[[str], WaError]
    ) -> Header:
        """The header from ``raw``: recalled when its entries were seen, else validated and
        remembered. Either way it carries a layout token shared by headers with those entries."""
        split = _split_metadata(raw)
        entries = split[1] if split else None
        known = self.seen.get(entries) if entries is not None else None
        if split and known and known.data_size == data_size:
            metadata = _metadata(split[0], corrupt)
            return Header(known.moved_to(data_start), metadata, layout=known)
        header = _validated(raw, data_start, data_size, corrupt)
        validated = _Validated(header.tensors, data_start, data_size)
        if entries is not None and self.held + len(entries) <= self.limit:
            self.seen[entries] = validated
            self.held += len(entries)
        return Header(header.tensors, header.metadata, layout=validated)


@dataclass(frozen=True, eq=False)  # compared by identity: it is the layout token
class _Validated:
    tensors: dict[str, TensorInfo]
    data_start: int
    data_size: int

    def moved_to(self, data_start: int) -> dict[str, TensorInfo]:
        shift = data_start - self.data_start
        if not shift:
            return dict(self.tensors)
        return {k: TensorInfo(i.dtype, i.shape, i.offset + shift) for k, i in self.tensors.items()}


# The library and wa write the metadata first: {"__metadata__":{...},"name":{...},...}
_METADATA_FIRST = re.compile(rb'\{[ \t\n\r]*"__metadata__"[ \t\n\r]*:[ \t\n\r]*')
_JSON_WHITESPACE = " \t\n\r"


def read_header(path: Path, memo: LayoutMemo | None = None, *, fd: int | None = None) -> Header:
    """Read and validate the header of a safetensors file; ``WaError`` (exit 3) when corrupt.

    As strict as the reference library: strict JSON (no NaN, no duplicate keys), known dtypes,
    dims within int64, and byte ranges that match shape × dtype, start at 0, follow each other
    without gap or overlap, and end exactly at the end of the file. An 80 MB header (a million
    tensors) is parsed in seconds: the collector is paused while its objects are built. With a
    ``memo``, a header whose tensor entries repeat one validated before is not checked again.
    ``fd``: the file already opened (:func:`wa_cli.io.descriptors.open_regular`), read through
    that descriptor; otherwise ``path`` is opened (and closed) here.
    """
    if fd is None:
        fd, _ = open_regular(path)
        try:
            return read_header(path, memo, fd=fd)
        finally:
            os.close(fd)

    def corrupt(why: str) -> WaError:
        return WaError(f"'{path}' is not a valid safetensors file: {why}", ExitCode.BAD_INPUT)

    size = os.fstat(fd).st_size
    if size < 8:
        raise corrupt(f"{size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", pread_exact(fd, 8, 0, path))
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise corrupt(
            f"header length {n} does not fit the file's {size} bytes "
            "(truncated, or not a safetensors file)"
        )
    raw = pread_exact(fd, n, 8, path)
    with paused_gc():
        if memo is None or n > memo.limit:  # a larger header is not remembered
            return _validated(raw, 8 + n, size - 8 - n, corrupt)
        return memo.read(raw, 8 + n, size - 8 - n, corrupt)


def _validated(
    raw: bytes, data_start: int, data_size: int, corrupt: Callable[[str], WaError]
) -> Header:
    """The header parsed and checked in full."""
    parsed = _parse(raw, corrupt)
    metadata = _metadata(parsed.pop("__metadata__", None) or {}, corrupt)
    tensors = _tensors(parsed, data_start, data_size, corrupt)
    del parsed  # freed here, inside the caller's pause: 20,000 dicts
    return Header(tensors, metadata)


def _split_metadata(raw: bytes) -> tuple[Any, str] | None:
    """(the parsed ``__metadata__`` value, the header text after it) when the header opens with
    its metadata; (``{}``, the whole text) when it has none; None otherwise (parsed in full)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    opening = _METADATA_FIRST.match(raw)
    if opening is None:
        return None if '"__metadata__"' in text else ({}, text.rstrip(_JSON_WHITESPACE))
    try:
        value, end = _DECODER.raw_decode(text, opening.end())
    except (ValueError, JsonLimitError, RecursionError):
        return None  # the full parse says what is wrong
    # Without the padding that aligns the data (its length follows the metadata's).
    rest = text[end:].rstrip(_JSON_WHITESPACE)
    return (value, rest) if '"__metadata__"' not in rest else None


def _metadata(value: Any, corrupt: Callable[[str], WaError]) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise corrupt("__metadata__ must map strings to strings")
    return dict(value)


def _parse(raw: bytes, corrupt: Callable[[str], WaError]) -> dict[str, Any]:
    try:
        parsed = json.loads(raw, parse_float=_no_float, parse_constant=_no_float)
    except RecursionError:
        raise corrupt("header is not JSON (nested too deeply)") from None
    except (ValueError, JsonLimitError) as e:  # JSONDecodeError, bad UTF-8, 4300+ digit ints
        raise corrupt(f"header is not JSON ({json_reason(e)})") from None
    if not isinstance(parsed, dict):
        raise corrupt("header is not a JSON object")
    # Duplicate keys collapse in a dict: count the fields each entry has in the raw text (the
    # fast test), and find the duplicate with the strict parser only when they disagree.
    entries = len(parsed) - ("__metadata__" in parsed)
    if any(raw.count(field) != entries for field in _FIELDS):
        try:
            parse_json(raw)
        except JsonLimitError as e:
            raise corrupt(f"header is not valid ({e})") from None
    return parsed


def _no_float(text: str) -> Any:
    raise JsonLimitError(f"the number {text[:30]} is not an integer")


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float)


def _tensors(
    parsed: dict[str, Any], data_start: int, data_size: int, corrupt: Callable[[str], WaError]
) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    itemsize = {name: dtype.itemsize for name, dtype in SAFETENSORS_DTYPES.items()}
    in_order = True  # byte ranges in the header's own order, each starting where the last ended
    expected = 0
    for key, entry in parsed.items():
        try:
            name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            dtype = SAFETENSORS_DTYPES[name]
            begin, end = offsets
        except (KeyError, TypeError, ValueError):
            if isinstance(entry, dict) and isinstance(entry.get("dtype"), str):
                from_safetensors_name(entry["dtype"])  # the one-line "unsupported dtype" error
            raise corrupt(f"malformed entry for tensor {key!r}") from None
        if type(shape) is not list:
            raise corrupt(f"tensor {key!r} has shape {_short(shape)} (expected a list)")
        if len(shape) > MAX_DIMS:
            raise corrupt(f"tensor {key!r} has {len(shape)} dimensions (at most {MAX_DIMS})")
        numel = 1
        for d in shape:
            if type(d) is not int or not 0 <= d <= _INT64:
                raise corrupt(f"tensor {key!r} has shape {_short(shape)} (dims: 0 to 2^63-1)")
            numel *= d
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
            raise corrupt(f"tensor {key!r} has data_offsets {_short(offsets)}")
        if end > data_size:
            raise corrupt(
                f"tensor {key!r} ends at byte {data_start + end} but the file has "
                f"{data_start + data_size} bytes (the file is truncated)"
            )
        if end - begin != numel * itemsize[name]:
            raise corrupt(
                f"tensor {key!r} spans {end - begin} bytes but {name} {_short(shape)} "
                f"needs {numel * itemsize[name]}"
            )
        if begin != expected:
            in_order = False
        expected = end
        tensors[key] = TensorInfo(dtype, tuple(shape), data_start + begin)
    if not in_order:
        expected = _check_contiguous(tensors, data_start, corrupt)
    if expected != data_size:
        raise corrupt(
            f"the tensors cover {expected} bytes but {data_size} follow the header (truncated, or "
            "extra bytes)"
        )
    return tensors


def _check_contiguous(
    tensors: dict[str, TensorInfo], data_start: int, corrupt: Callable[[str], WaError]
) -> int:
    """Where the byte ranges end, sorted by offset, once they leave no gap and overlap none
    (headers whose order is not the data's order, which the format allows)."""
    spans = sorted((info.offset - data_start, info.nbytes, key) for key, info in tensors.items())
    expected, previous = 0, None
    for begin, nbytes, key in spans:
        if begin != expected:
            what = "overlaps" if begin < expected else "leaves a gap after"
            raise corrupt(f"tensor {key!r} {what} {previous!r} (offsets must be contiguous)")
        expected, previous = begin + nbytes, key
    return expected


def _short(value: object) -> str:
    text = json.dumps(value) if isinstance(value, list | int | str | None) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build_header(
    tensors: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, list[int]]:
    """The header bytes (length prefix included) for tensors laid out back to back in this order.

    Returns the bytes and each tensor's byte size, so a writer can check what it is given. The
    JSON is ``json.dumps(entries, separators=(",", ":"))`` byte for byte, written entry by entry
    with each (dtype, shape)'s text made once: a 20,000-tensor header in a quarter of the time.
    """
    names = [key for key, _, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("a tensor name appears twice in the output")
    parts = []
    if metadata:
        clean = {_unicode(k): _unicode(v) for k, v in metadata.items()}
        parts.append('"__metadata__":' + json.dumps(clean, separators=(",", ":")))
    known: dict[tuple[torch.dtype, tuple[int, ...]], tuple[str, int]] = {}
    sizes = []
    offset = 0
    for key, dtype, shape in tensors:
        spec = (dtype, tuple(shape))
        if spec not in known:
            dims = ",".join(str(int(d)) for d in spec[1])
            text = f'{{"dtype":"{safetensors_name(dtype)}","shape":[{dims}],"data_offsets":['
            known[spec] = (text, math.prod(spec[1]) * dtype.itemsize)
        text, nbytes = known[spec]
        parts.append(f"{_json_string(key)}:{text}{offset},{offset + nbytes}]}}")
        sizes.append(nbytes)
        offset += nbytes
    body = ("{" + ",".join(parts) + "}").encode()
    # Pad with spaces so tensor data starts 8-byte aligned, as the reference writer does.
    body += b" " * (-(len(body) + 8) % ALIGNMENT)
    return struct.pack("<Q", len(body)) + body, sizes


def _unicode(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name (lone surrogates, as ``os.fsdecode``
    gives them) written as ``\\xff``: JSON readers such as the safetensors library refuse a
    header holding a lone surrogate, so a file name must not make the output unreadable."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate not from a file name: escape it as it is
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return text


# How json.dumps writes a string (ASCII, escaped): its own C function.
_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
