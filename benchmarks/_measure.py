"""Run one command as a child; print its wall time and exact peak RSS as one JSON line.

A fresh wrapper per run makes ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` the peak resident set of
that one command (the largest of its waited-for descendants), with no polling error. The wrapper's
own start-up is not timed: the clock runs around the child only.

Usage: python benchmarks/_measure.py -- CMD [ARG...]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    cmd = argv[1:] if argv and argv[0] == "--" else argv
    if not cmd:
        print("usage: _measure.py -- CMD [ARG...]", file=sys.stderr)
        return 2
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {
        "rc": proc.returncode,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "stdout": proc.stdout[-4000:],
        "stderr": proc.stderr[-4000:],
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
