"""The floor for an averaging run: what any tool must pay on this machine.

Import torch, read every input byte once (``readinto`` one reused buffer), write one file of the
output's size and fsync it (as ``wa`` does). Prints the three phase times as one JSON line.

With ``--no-teardown`` the process then ends with ``os._exit`` instead of the interpreter's
teardown (freeing torch object by object), as ``wa`` ends: the floor for a tool that skips it too.

Usage: python benchmarks/_floor.py [--no-teardown] OUT_FILE OUT_BYTES INPUT...
"""

from __future__ import annotations

import json
import os
import sys
import time

BUFFER_BYTES = 64 * 2**20


def main(argv: list[str]) -> int:
    no_teardown = argv[:1] == ["--no-teardown"]
    argv = argv[1:] if no_teardown else argv
    out, out_bytes, inputs = argv[0], int(argv[1]), argv[2:]
    t0 = time.perf_counter()
    import torch  # noqa: F401 - the import is part of the floor (every variant pays it)

    t1 = time.perf_counter()
    buf = bytearray(BUFFER_BYTES)
    view = memoryview(buf)
    read = 0
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                read += n
    t2 = time.perf_counter()
    with open(out, "wb", buffering=0) as f:
        left = out_bytes
        while left > 0:
            left -= f.write(view[: min(left, BUFFER_BYTES)])
        os.fsync(f.fileno())
    t3 = time.perf_counter()
    phases = {"import_torch_s": t1 - t0, "read_s": t2 - t1, "write_fsync_s": t3 - t2}
    print(json.dumps({**phases, "read_bytes": read}), flush=True)
    if no_teardown:
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
