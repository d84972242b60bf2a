"""NeMo's ``.nemo`` archive: a tar of ``model_config.yaml`` and ``model_weights.ckpt`` (or a
``model_weights/`` DCP folder), read in place.

NeMo writes an uncompressed tar (older releases gzipped it). In an uncompressed tar every member's
bytes lie in place, so ``model_weights.ckpt`` is loaded from that byte range (:mod:`member`) and its
tensors are read with ``pread`` like any pickle: nothing is extracted or copied. A compressed
archive has no such ranges; it is refused with the one command that extracts it.
"""

from __future__ import annotations

import shlex
import tarfile
from collections.abc import Sequence
from pathlib import Path

from wa_cli.errors import ExitCode, WaError
from wa_cli.io.checkpoint import Checkpoint
from wa_cli.io.formats import NEMO_SUFFIX
from wa_cli.io.keys import KeyFilter
from wa_cli.io.member import Member

WEIGHTS = "model_weights.ckpt"
CONFIG = "model_config.yaml"
_COMPRESSED = {b"\x1f\x8b": ("gzip", "z"), b"BZ": ("bzip2", "j"), b"\xfd7": ("xz", "J")}


def is_nemo_name(path: Path) -> bool:
    """Whether ``path`` is named like a NeMo archive."""
    return path.name.lower().endswith(NEMO_SUFFIX)


def weights_member(path: Path) -> Member:
    """Where ``model_weights.ckpt`` lies inside the archive.

    Raises:
        WaError: (BAD_INPUT) a compressed archive (with the command that extracts it), a DCP
            ``model_weights/`` folder (extract it: wa reads the folder), or no weights.
    """
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic in _COMPRESSED:
        kind, flag = _COMPRESSED[magic]
        raise WaError(
            f"'{path}' is a {kind}-compressed NeMo archive, whose weights cannot be read in place; "
            f"extract it with: {_extract(path, flag)} (then pass '{_folder(path)}/{WEIGHTS}')",
            ExitCode.BAD_INPUT,
        )
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    except (tarfile.TarError, OSError) as e:
        raise WaError(
            f"'{path}' is not a NeMo archive (a tar file): {e}", ExitCode.BAD_INPUT
        ) from e
    weights = members.get(WEIGHTS)
    if weights is not None and weights.isreg() and not weights.issparse():
        return Member(path, weights.offset_data, weights.size)
    if any(name.startswith("model_weights/") for name in members):
        raise WaError(
            f"'{path}' holds its weights as a DCP folder 'model_weights/'; extract it with: "
            f"{_extract(path, '')} (then pass '{_folder(path)}/model_weights')",
            ExitCode.BAD_INPUT,
        )
    found = ", ".join(sorted(members)[:5]) or "nothing"
    raise WaError(
        f"'{path}' holds no {WEIGHTS} (a NeMo archive holds it beside {CONFIG}; found {found})",
        ExitCode.BAD_INPUT,
    )


def _folder(path: Path) -> str:
    return path.name[: -len(NEMO_SUFFIX)] + "_nemo"


def _extract(path: Path, flag: str) -> str:
    folder = shlex.quote(_folder(path))
    return f"mkdir -p {folder} && tar -x{flag}f {shlex.quote(str(path))} -C {folder}"


def open_nemo(
    path: Path,
    key: str | None,
    *,
    allow_globals: Sequence[str | type],
    keys: KeyFilter,
    variant: str | None,
) -> Checkpoint:
    """The archive's ``model_weights.ckpt`` as a lazy pickle checkpoint named after the archive."""
    from wa_cli.io.pickle_checkpoint import PickleCheckpoint

    member = weights_member(path)
    ckpt = PickleCheckpoint(
        path, key, allow_globals=allow_globals, keys=keys, variant=variant, member=member
    )
    ckpt.notes.append(f"read {WEIGHTS} inside the NeMo archive {path.name}")
    return ckpt
