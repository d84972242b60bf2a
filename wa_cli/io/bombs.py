"""Compressed inputs that expand past what they hold: refused before they are inflated.

``torch.save`` stores tensor data uncompressed (``ZIP_STORED``), and wa reads it in place. A
zip member that is deflated is read whole into memory by ``torch.load``, so a 1 MB ``.pt``
whose storage inflates to 1.2 GB took 1.2 GB (a 3.9 MB one passed 7 GB). Deflated weights
shrink by a few percent, zeros by a thousand times: a member is refused when it would expand
past ``MAX_INFLATED`` bytes *and* more than ``MAX_RATIO`` times its compressed size. The same
holds for a ``.npz`` of BatchNorm data, whose members numpy inflates whole.
"""

from __future__ import annotations

import os
import zipfile

from wa_cli.errors import ExitCode, WaError

MAX_RATIO = 20
MAX_INFLATED = 64 << 20


def check_zip_expansion(
    path: str | os.PathLike[str],
    what: str = "checkpoint",
    fix: str = "torch.save writes them uncompressed: re-save the checkpoint with torch.save",
) -> None:
    """Refuse a zip-format file whose deflated members expand past the bounds (one line).

    Not a zip file (a legacy pickle, a safetensors file): nothing to check. ``fix`` says how to
    write the file without compression.
    """
    try:
        with zipfile.ZipFile(path) as z:
            members = [i for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    packed = sum(i.compress_size for i in members)
    inflated = sum(i.file_size for i in members)
    if inflated <= MAX_INFLATED or inflated <= MAX_RATIO * max(packed, 1):
        return
    biggest = max(members, key=lambda i: i.file_size)
    raise WaError(
        f"{what} '{path}' holds compressed data that would expand {inflated // max(packed, 1)}x "
        f"to {inflated / 2**20:.0f} MiB (largest: '{biggest.filename}'); wa refuses compressed "
        f"data past {MAX_RATIO}x and {MAX_INFLATED >> 20} MiB, a zip bomb's signature ({fix})",
        ExitCode.BAD_INPUT,
    )
