"""What each package costs a gateproxy process in resident memory: in a fresh interpreter,
the packages a worker of `workers: N` loads and then those only its supervisor loads, one
after the other, with the RSS each step adds (a package shared by two is counted where it
is first loaded). A second column repeats the run with no default CA file, so that the
CA bundle that aiohttp's two SSL contexts load at import shows as the difference.

    .venv/bin/python bench/imports.py
"""

from __future__ import annotations

import importlib
import os
import sys

# (what, modules imported for it); in the order a process loads them.
WORKER = [
    ("the interpreter", []),
    ("asyncio and ssl (OpenSSL)", ["ssl", "asyncio"]),
    ("uvloop", ["uvloop"]),
    ("httptools (the HTTP core's parsers)", ["httptools"]),
    ("multidict, yarl", ["multidict", "yarl"]),
    ("aiohttp (the probes' client, its SSL contexts)", ["aiohttp"]),
    ("loguru", ["loguru"]),
    ("orjson", ["orjson"]),
    ("PyYAML", ["yaml"]),
    ("gateproxy: a worker's modules", ["gateproxy.cli"]),
]
SUPERVISOR = [
    ("aiohttp.web (the admin port)", ["aiohttp.web"]),
    ("prometheus-client (the exposition)", ["prometheus_client"]),
    ("gateproxy: the supervisor's own modules",
     ["gateproxy.workers.supervisor", "gateproxy.serve.admin_port"]),
    ("watchfiles (the configuration file's watch)", ["watchfiles"]),
    ("jinja2 (the status page, once opened)", ["jinja2"]),
]


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def child() -> None:
    """Import every step, printing the RSS after each (MiB)."""
    for _, modules in WORKER + SUPERVISOR:
        for module in modules:
            importlib.import_module(module)
        print(f"{rss_mib():.2f}")


def run(env: dict[str, str]) -> list[float]:
    import subprocess  # here: the child's interpreter loads as little as it can

    out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return [float(line) for line in out.split()]


def main() -> None:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    normal = run(env)
    no_ca = run({**env, "SSL_CERT_FILE": "/nonexistent", "SSL_CERT_DIR": "/nonexistent"})
    print(f"{'':46} {'adds MiB':>9} {'total':>7} {'no CA file':>11}")
    before = (0.0, 0.0)
    for i, (what, _) in enumerate(WORKER + SUPERVISOR):
        if i == len(WORKER):
            print("-- only in the supervisor (and in a single process)")
        print(f"{what:46} {normal[i] - before[0]:9.1f} {normal[i]:7.1f} "
              f"{no_ca[i] - before[1]:11.1f}")
        before = (normal[i], no_ca[i])


if __name__ == "__main__":
    child() if sys.argv[1:] == ["--child"] else main()
