"""Model, data and forward given as text (``pkg.mod:fn``, ``file.py:fn``, a tensor file).

Part of :mod:`wa_cli.methods.bn`. ``wa bn-recalibrate --model net.py:build --data calib.npz``
and ``wa.recalibrate_checkpoint(ckpt, out, "net.py:build", "calib.npz")`` resolve their specs
here, the same way: the factory is imported now (a typo fails at once) and called later, a
tensor file is opened and cut into batches, and what shaped the statistics is recorded in the
output's provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from wa_cli.errors import ExitCode, Param, WaError
from wa_cli.io.data_files import SUFFIXES, data_suffix
from wa_cli.methods.bn.tensor_data import tensor_file_batches
from wa_cli.methods.bn.usercode import call_factory, resolve_callable

ModelSource = nn.Module | Callable[[], nn.Module]
DataSource = Iterable[Any] | Callable[[], Iterable[Any]]

DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class BNSpecs:
    """How model and data specs are resolved (the CLI's ``--model-kwargs``, ``--batch-size``...).

    Attributes:
        model_kwargs: keyword arguments of the model factory: a mapping, or JSON text.
        data_kwargs: keyword arguments of the loader factory: a mapping, or JSON text.
        batch_size: rows per batch of a tensor file (default: 64).
        input_key: the inputs tensor of a tensor file.
        drop_last: drop an incomplete last batch of a tensor file.
    """

    model_kwargs: Mapping[str, Any] | str | None = None
    data_kwargs: Mapping[str, Any] | str | None = None
    batch_size: int | None = None
    input_key: str | None = None
    drop_last: bool | None = None


def resolve_specs(
    model: Any, data: Any, forward: Any, specs: BNSpecs
) -> tuple[Any, Any, Callable[..., Any] | None, dict[str, Any]]:
    """The model, data and forward with every text spec resolved, and what to record of them."""
    from wa_cli.methods.bn.tensor_data import TensorFileBatches

    recorded: dict[str, Any] = {}
    if isinstance(model, str):
        recorded.update(model=model, model_kwargs=_text(specs.model_kwargs))
        model = resolve_model(model, _json_kwargs(specs.model_kwargs, "model_kwargs"))
    if isinstance(data, str):
        recorded.update(data=data, data_kwargs=_text(specs.data_kwargs))
        data = resolve_data(
            data,
            batch_size=specs.batch_size,
            input_key=specs.input_key,
            kwargs=_json_kwargs(specs.data_kwargs, "data_kwargs"),
            drop_last=specs.drop_last,
        )
    if isinstance(forward, str):
        recorded["forward"] = forward
        forward = resolve_callable(forward, what="forward function")
    if isinstance(data, TensorFileBatches):
        recorded.update(
            batch_size=data.batch_size,
            input_key=data.key,
            drop_last=data.drop_last is True,
            dropped_rows=data.dropped,
        )
    return model, data, forward, {k: v for k, v in recorded.items() if v is not None}


def _text(value: Mapping[str, Any] | str | None) -> str | None:
    import json

    return value if value is None or isinstance(value, str) else json.dumps(dict(value))


def _json_kwargs(value: Mapping[str, Any] | str | None, param: str) -> dict[str, Any] | None:
    """Keyword arguments from a mapping or a JSON object's text."""
    from wa_cli.io.hostile import json_reason, parse_json

    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    try:
        parsed = parse_json(value)
    except ValueError as e:
        raise WaError.naming(
            "cannot read {param}: {reason} (expected a JSON object, e.g. '{{\"depth\": 18}}')",
            ExitCode.USAGE,
            param=Param(param),
            reason=json_reason(e),
        ) from e
    if not isinstance(parsed, dict):
        raise WaError.naming(
            "{param} must be a JSON object of keyword arguments, got {kind}",
            ExitCode.USAGE,
            param=Param(param),
            kind=type(parsed).__name__,
        )
    return parsed


def resolve_model(spec: str, kwargs: Mapping[str, Any] | None = None) -> Callable[[], nn.Module]:
    """The model factory named by ``spec`` (``pkg.mod:fn`` or ``file.py:fn``), ready to call.

    The spec is resolved (imported) now, so a typo fails at once; the factory runs when the
    returned function is called, and an exception it raises becomes a one-line ``WaError``.

    Args:
        spec: where the factory lives.
        kwargs: keyword arguments for the factory (``--model-kwargs``).

    Returns:
        A function of no arguments that builds the model.

    Example:
        >>> build = resolve_model("torch.nn:Linear", {"in_features": 2, "out_features": 1})
        >>> build().weight.shape
        torch.Size([1, 2])
    """
    factory = resolve_callable(spec, what="model factory")
    return lambda: as_module(call_factory(factory, kwargs, what="model factory"), spec)


def resolve_data(
    spec: str,
    *,
    batch_size: int | None = None,
    input_key: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    drop_last: bool | None = None,
) -> DataSource:
    """The batches named by ``--data``: a loader factory spec, or a tensor file of inputs.

    A spec ending in ``.safetensors``, ``.pt``, ``.pth``, ``.npy`` or ``.npz`` (or holding no
    ``:``) is a tensor file, opened and checked now and cut into ``batch_size`` rows per batch;
    anything else is ``pkg.mod:fn`` or ``file.py:fn``, resolved now and called with ``kwargs``
    only when the batches are needed (a model without BatchNorm never loads data).

    Args:
        spec: the tensor file or the loader factory.
        batch_size: rows per batch of a tensor file (default 64).
        input_key: the tensor holding the inputs, in a file with several.
        kwargs: keyword arguments for a loader factory (``--data-kwargs``).
        drop_last: for a tensor file, as in
            :func:`~wa_cli.methods.bn.tensor_data.tensor_file_batches`
            (None: leave out only a last batch of one row).

    Returns:
        An iterable of batches, or a function of no arguments that returns one.

    Raises:
        WaError: a spec that does not resolve, a bad tensor file, or options of the other form.

    Example:
        >>> batches = resolve_data("calib.safetensors", batch_size=128)  # doctest: +SKIP
    """
    source, sep, _ = spec.rpartition(":")
    is_file = data_suffix(Path(spec)) in SUFFIXES or not sep or not source
    if is_file:
        if kwargs:
            raise WaError.naming(
                "{data} '{spec}' is a tensor file, which takes no {data_kwargs} "
                "(use {batch_size} and {input_key})",
                ExitCode.USAGE,
                spec=spec,
            )
        return tensor_file_batches(
            spec,
            batch_size=batch_size or DEFAULT_BATCH_SIZE,
            input_key=input_key,
            drop_last=drop_last,
        )
    if batch_size is not None or input_key is not None or drop_last is not None:
        raise WaError.naming(
            "{batch_size}, {input_key} and {drop_last} apply to a tensor file, but {data} "
            "'{spec}' names a loader (pass its arguments with {data_kwargs})",
            ExitCode.USAGE,
            spec=spec,
        )
    loader = resolve_callable(spec, what="data loader")
    return lambda: call_factory(loader, kwargs, what="data loader")


def as_module(value: Any, spec: str | None = None) -> nn.Module:
    if isinstance(value, nn.Module):
        return value
    where = f"model factory '{spec}'" if spec else "the model factory"
    raise WaError(
        f"{where} returned a {type(value).__name__}, not a torch.nn.Module "
        "(it must build and return the network)",
        ExitCode.USAGE,
    )
