"""A tiny launcher that runs one contender and writes its wall time and rusage as JSON.

Why not wait4 from the harness directly: on Linux a child's ``ru_maxrss`` starts from the memory of
the process that forked it (exec records the pre-exec address space's high-water mark, and
posix_spawn/vfork shares the parent's). The harness holds the Azure SDK and tens of MB, which would
become every contender's floor. This launcher is started with ``python -S -I`` and imports nothing
beyond the interpreter core, so the floor is its own few MB (about 7 MB here), below any contender.

Usage: ``python -S -I launch.py RESULT.json -- ARGV...``. Run by path: it must not import the bench.
"""

import json
import os
import sys
import time


def main() -> int:
    result, sep, *argv = sys.argv[1:]
    if sep != "--" or not argv:
        print("usage: launch.py RESULT.json -- ARGV...", file=sys.stderr)
        return 2
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"launch.py: cannot run {argv[0]}: {exc}", file=sys.stderr)
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    with open(result, "w") as fh:
        json.dump(
            {
                "wall": wall,
                "user": usage.ru_utime,
                "sys": usage.ru_stime,
                "maxrss_kb": usage.ru_maxrss,
                "returncode": os.waitstatus_to_exitcode(status),
            },
            fh,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
