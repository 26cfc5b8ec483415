"""Flame graphs of gateproxy under load: the forwarded path and the gate's 503.

Starts what `bench/run.py` starts (nginx as the upstream, a stand-in docker-runner,
gateproxy, all on 127.0.0.1), puts `wrk` load on gateproxy (64 connections, small GETs
to /api/ping; then /api/containers with the runner stopped) and records the gateproxy
process with py-spy meanwhile. Writes one SVG per scenario and stops every process it
started by PID.

    .venv/bin/pip install py-spy            # a profiler, not a dependency of gateproxy
    .venv/bin/python bench/flame.py docs/flame      # docs/flame-forwarded.svg, -503.svg
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run import HOST, Bench, Procs, missing_tools, tool, wait_gated  # type: ignore[import-not-found]

SCENARIOS = {"forwarded": "/api/ping", "503": "/api/containers"}


def record(pid: int, url: str, seconds: int, out: Path) -> None:
    """py-spy's flame graph of `pid` while wrk loads `url` for `seconds`."""
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
         "--nonblocking", "--format", "flamegraph", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # wrk a little longer than py-spy, so that every sample is under load.
    subprocess.run([tool("wrk"), "-t1", "-c64", f"-d{seconds + 2}s", url],
                   check=True, capture_output=True, timeout=seconds + 30)
    _, err = spy.communicate(timeout=30)
    if spy.returncode != 0:
        raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", type=Path, help="output path prefix: PREFIX-<scenario>.svg")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    missing = missing_tools() + ([] if shutil.which("py-spy") else ["py-spy (pip)"])
    if missing:
        print(f"flame: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gateproxy-flame-") as workdir:
        procs = Procs(Path(workdir))
        try:
            bench = Bench(Path(workdir), procs)
            bench.start_nginx()
            bench.start_runner()
            proc, port = bench.gateproxy("gateproxy")
            for name, path in SCENARIOS.items():
                if name == "503":
                    bench.stop_runner()
                    wait_gated("gateproxy", port)
                out = args.prefix.with_name(f"{args.prefix.name}-{name}.svg")
                record(proc.pid, f"http://{HOST}:{port}{path}", args.seconds, out)
                print(f"flame: {out}")
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
