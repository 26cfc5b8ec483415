"""Put first on a process's PYTHONPATH by tests/process/test_workers.py: at exit, the
process (and any process it starts with the same environment) writes the name of every
module it has loaded to `$RECORD_MODULES/<pid>.txt`."""

from __future__ import annotations

import atexit
import os
import sys

_DIR = os.environ.get("RECORD_MODULES")


def _write() -> None:
    if _DIR is not None:
        with open(os.path.join(_DIR, f"{os.getpid()}.txt"), "w", encoding="utf-8") as out:
            out.write("\n".join(sorted(sys.modules)))


atexit.register(_write)
