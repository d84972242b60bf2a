"""The options every reducing method shares, checked once: one dataclass instead of four copies.

``average``, ``ema`` and ``graft`` (and their ``*_to_file`` twins) take the same keyword
arguments for how to combine (``keys``, ``non_float``, ``dtype``, ``precision``, ``device``) and
how to write (``force``, ``max_shard_size``, ``progress``, ``command``). They build these
dataclasses through :meth:`ReduceOptions.checked` and :meth:`WriteOptions.checked`, so every value
is validated the same way and a bad one names its parameter.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from wa_cli.engine import params as check
from wa_cli.engine.device import resolve_device
from wa_cli.engine.plan import KeysMode, NonFloatPolicy
from wa_cli.engine.precision import Precision
from wa_cli.errors import WaError
from wa_cli.io.dtypes import dtype_name
from wa_cli.io.guard import Reads
from wa_cli.io.output_check import Layout
from wa_cli.io.writer import DEFAULT_SHARD_NAME, WriteSettings, check_shard_name

ProgressCallback = Callable[[int, int], None]
OutputFormat = Literal["safetensors", "dcp"]
OUTPUT_FORMATS = ("safetensors", "dcp")


@dataclass(frozen=True)
class ReduceOptions:
    """How inputs are combined: key sets, non-float policy, output dtype, accumulator, device."""

    keys: KeysMode = "strict"
    non_float: NonFloatPolicy = "last"
    dtype: torch.dtype | None = None
    precision: Precision = "auto"
    device: torch.device = torch.device("cpu")

    @classmethod
    def checked(
        cls,
        *,
        keys: object = "strict",
        non_float: object = "last",
        dtype: object = None,
        precision: object = "auto",
        device: object = "auto",
    ) -> ReduceOptions:
        """Validate user values (``dtype`` may be a name such as ``"bfloat16"``).

        Example:
            >>> ReduceOptions.checked(dtype="bf16", device="cpu").dtype
            torch.bfloat16
        """
        return cls(
            keys=check.choice("keys", keys, KeysMode),
            non_float=check.choice("non_float", non_float, NonFloatPolicy),
            dtype=check.dtype("dtype", dtype),
            precision=check.choice("precision", precision, Precision),
            device=resolve_device(device),  # type: ignore[arg-type]  # checked there
        )

    @property
    def dtype_name(self) -> str | None:
        return dtype_name(self.dtype) if self.dtype is not None else None

    def params(self) -> dict[str, Any]:
        """The options as the provenance and the report record them."""
        return {
            "keys": self.keys,
            "non_float": self.non_float,
            "precision": self.precision,
            "dtype": self.dtype_name,
        }


@dataclass(frozen=True)
class WriteOptions:
    """How an output is written: replace it or not, shard size, progress, recorded command."""

    force: bool = False
    max_shard_size: int | None = None
    progress: ProgressCallback | None = None
    command: str | None = None
    # Shards and index: <name>-00001-of-0000N.safetensors; None: the inputs' own name, or model.
    shard_name: str | None = None
    copy_files: tuple[Path, ...] = ()  # copied beside the shards
    copy_config: bool = False  # copy the newest input's config files beside the shards
    output_format: OutputFormat = "safetensors"  # or a DCP folder (--format dcp)

    def with_progress(self, progress: ProgressCallback | None) -> WriteOptions:
        """The same options reporting progress to ``progress`` (the CLI's bar, made later)."""
        return dataclasses.replace(self, progress=progress)

    def settings(self, reads: Reads = ()) -> WriteSettings:
        """The writer's settings for these options (``reads``: the inputs the guard protects)."""
        return WriteSettings(
            force=self.force,
            max_shard_size=self.max_shard_size,
            reads=reads,
            shard_name=self.shard_name or DEFAULT_SHARD_NAME,
            copy_files=self.copy_files,
        )

    def output_folder_options(self) -> bool:
        """Whether an option of sharded output is given (some methods write single files)."""
        return bool(
            self.max_shard_size is not None
            or self.shard_name is not None
            or self.copy_files
            or self.copy_config
            or self.output_format != "safetensors"
        )

    @classmethod
    def checked(
        cls,
        *,
        force: object = False,
        max_shard_size: object = None,
        progress: object = None,
        command: object = None,
        shard_name: object = None,
        copy_files: object = (),
        output_format: object = "safetensors",
        copy_config: object = False,
    ) -> WriteOptions:
        """Validate user values (``max_shard_size`` may be ``"5GB"``)."""
        if progress is not None and not callable(progress):
            raise WaError.naming("{progress=}{got!r} is not callable", got=progress)
        if command is not None and not isinstance(command, str):
            raise WaError.naming("{command=}{got!r} must be a string", got=command)
        if output_format not in OUTPUT_FORMATS:
            raise WaError.naming(
                "{output_format=}{got!r} must be safetensors or dcp", got=output_format
            )
        if output_format == "dcp" and (max_shard_size is not None or copy_files):
            raise WaError.naming(
                "{output_format=}dcp writes one DCP folder: "
                "without {max_shard_size} or {copy_files}"
            )
        return cls(
            force=check.flag("force", force),
            max_shard_size=check.size("max_shard_size", max_shard_size),
            progress=progress,  # type: ignore[arg-type]  # checked callable above
            command=command,
            shard_name=None if shard_name is None else check_shard_name(str(shard_name)),
            copy_files=tuple(Path(p) for p in copy_files),  # type: ignore[attr-defined]  # paths
            output_format=cast(OutputFormat, output_format),
            copy_config=check.flag("copy_config", copy_config),
        )

    @property
    def layout(self) -> Layout:
        """What is written at the output: a file, a folder of shards, or a DCP folder."""
        if self.output_format == "dcp":
            return "dcp"
        return "file" if self.max_shard_size is None else "shards"

    def check_output(
        self, output: str | os.PathLike[str], reads: Reads = (), *, existing: bool = True
    ) -> None:
        """The output guard (:func:`wa_cli.io.output_check.check_output`) for this layout.

        Without ``reads`` it is the check made before any input is opened (a link, a misnamed
        output, a file wa did not write, an existing output without ``force``, a missing
        folder): a run must not read (and compare) every input to refuse its ``-o``."""
        from wa_cli.io.output_check import check_output

        check_output(output, reads=reads, force=self.force, layout=self.layout, existing=existing)
