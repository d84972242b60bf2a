"""What one BatchNorm re-estimation asks for, as option objects checked once.

:class:`BNOptions` holds the statistical choices (weighting, a batch limit, whether InstanceNorm
layers take part) that :func:`wa_cli.methods.bn.recalibrate.recalibrate_bn` and the checkpoint
flow share and that the output's provenance records. :class:`BNRequest` is one call of
:func:`wa_cli.methods.bn.checkpoint.recalibrate_checkpoint`: its keyword arguments
(:class:`BNCheckpointArgs`) turned into the specs, read, statistics and write options that travel
whole to where they are used. A bad value is a ``WaError`` naming its parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from wa_cli.engine.params import choice
from wa_cli.errors import ExitCode, Param, WaError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from wa_cli.engine.options import WriteOptions
    from wa_cli.io.reader import ReadOptions
    from wa_cli.methods.bn.specs import BNSpecs

Weighting = Literal["batch", "sample"]
WEIGHTINGS: tuple[Weighting, ...] = ("batch", "sample")

BatchProgress = Callable[[int, int | None], None]
"""``progress(batches done, total or None)``, called after each batch."""


@dataclass(frozen=True)
class BNOptions:
    """How the statistics are estimated: batch or sample weighting, a batch limit, which layers."""

    weighting: Weighting = "batch"
    max_batches: int | None = None
    include_instancenorm: bool = False

    @classmethod
    def checked(
        cls,
        *,
        weighting: object = "batch",
        max_batches: object = None,
        include_instancenorm: bool = False,
    ) -> BNOptions:
        """Validate user values.

        Example:
            >>> BNOptions.checked(weighting="sample", max_batches=3).max_batches
            3
        """
        checked_weighting: Weighting = choice("weighting", weighting, WEIGHTINGS)
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
        ):
            raise WaError.naming(
                "{max_batches} must be a positive integer, got {got!r}",
                ExitCode.USAGE,
                got=max_batches,
            )
        return cls(checked_weighting, max_batches, include_instancenorm)

    def params(self) -> dict[str, Any]:
        """The options as the provenance records them."""
        return {
            "weighting": self.weighting,
            "max_batches": self.max_batches,
            "include_instancenorm": self.include_instancenorm,
        }


class BNCheckpointArgs(TypedDict, total=False):
    """The keyword arguments of :func:`~wa_cli.methods.bn.checkpoint.recalibrate_checkpoint`."""

    specs: BNSpecs
    read: ReadOptions
    device: str | torch.device
    weighting: Weighting
    max_batches: int | None
    forward: Callable[[nn.Module, Any], Any] | str | None
    include_instancenorm: bool
    force: bool
    max_shard_size: int | str | None
    command: str | None
    write: WriteOptions
    progress: BatchProgress | None
    params: Mapping[str, Any] | None
    fit_prefix: bool


_WRITE = ("force", "max_shard_size", "command")
_KEYWORDS = frozenset(BNCheckpointArgs.__annotations__)


@dataclass(frozen=True)
class BNRequest:
    """One ``recalibrate_checkpoint`` call's options; ``forward`` may still be a spec."""

    specs: BNSpecs
    read: ReadOptions | None
    bn: BNOptions
    write: WriteOptions
    device: str | torch.device = "auto"
    forward: Callable[[nn.Module, Any], Any] | str | None = None
    progress: BatchProgress | None = None
    params: dict[str, Any] = field(default_factory=dict)
    fit_prefix: bool = False

    @classmethod
    def of(cls, args: Mapping[str, Any]) -> BNRequest:
        """Split ``recalibrate_checkpoint``'s keyword arguments into the option objects.

        Raises:
            TypeError: for a keyword it does not take (as Python does), or ``write=`` options
                it does not use (shard names, copied files, DCP, byte progress).
            WaError: for a bad value, or ``write=`` given together with one of its fields.
        """
        from wa_cli.methods.bn.specs import BNSpecs

        for name in args:
            if name not in _KEYWORDS:
                raise TypeError(
                    f"recalibrate_checkpoint() got an unexpected keyword argument {name!r}"
                )
        bn = BNOptions.checked(
            weighting=args.get("weighting", "batch"),
            max_batches=args.get("max_batches"),
            include_instancenorm=args.get("include_instancenorm", False),
        )
        return cls(
            specs=args.get("specs") or BNSpecs(),
            read=args.get("read"),
            bn=bn,
            write=_write(args),
            device=args.get("device", "auto"),
            forward=args.get("forward"),
            progress=args.get("progress"),
            params=dict(args.get("params") or {}),
            fit_prefix=args.get("fit_prefix", False),
        )


def _write(args: Mapping[str, Any]) -> WriteOptions:
    """The write options: ``write=`` as given, or built from ``force``, ``max_shard_size``..."""
    from wa_cli.engine.options import WriteOptions

    given = {k: args[k] for k in _WRITE if k in args}
    write = args.get("write")
    if write is None:
        return WriteOptions.checked(**given)
    if given:
        first = next(iter(given))
        raise WaError.naming(
            "give {write=} or {first=}, not both", ExitCode.USAGE, first=Param(first)
        )
    if write.progress is not None or write.shard_name is not None or write.copy_files:
        raise TypeError(
            "recalibrate_checkpoint() takes no shard_name, copy_files or byte progress in write= "
            "(progress= counts batches)"
        )
    if write.copy_config or write.output_format != "safetensors":
        raise TypeError("recalibrate_checkpoint() writes safetensors only, without copy_config")
    return write
