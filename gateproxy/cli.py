"""The command line: `serve`, `check-config`, `demo` (README, "Command line").

Exit codes: 0 normal end, 1 cannot start (port taken, required dependency down),
2 bad configuration or an unsafe environment.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import yaml

from gateproxy import __version__, config, logs
from gateproxy.logs import log
from gateproxy.serve.gateway import Gateway
from gateproxy.serve.listeners import StartupError
from gateproxy.serve.reload import Reloader
from gateproxy.workers.control import WorkerLink


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateproxy",
        description="Health-gate sidecar proxy in front of the platform-server.")
    parser.add_argument("--version", action="version", version=f"gateproxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("serve", "run the proxy (the default)"),
                       ("check-config", "validate and print the effective configuration")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", metavar="PATH",
                         help=f"YAML configuration file (default: ${config.CONFIG_ENV})")
    # Started by the supervisor of `workers: N`; not for people (hidden from --help).
    worker = sub.add_parser("worker")
    worker.add_argument("--config", metavar="PATH")
    for flag in ("--control", "--admin"):
        worker.add_argument(flag, required=True, metavar="SOCKET")
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--index", type=int, required=True)
    demo = sub.add_parser("demo", help="run everything on loopback with stand-ins",
                          description="Run gateproxy in front of a stand-in platform-server "
                          "and a stand-in docker-runner that goes down and comes back.")
    demo.add_argument("--port", type=int, default=8080, help="gateproxy's port (8080)")
    demo.add_argument("--seconds", type=float, default=0,
                      help="stop by itself after this many seconds (0: run until Ctrl-C)")
    demo.add_argument("--grpc", action="store_true",
                      help="a gRPC-era docker-runner (signed RunnerService/Ready)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    if command == "check-config":
        return check_config(args.config)
    if command == "worker":
        return work(args)
    if command == "demo":
        from gateproxy.demo import run as demo

        return run(demo.main(args.port, args.seconds, args.grpc))
    return serve(getattr(args, "config", None))


def _load(path: str | None) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return None


def check_config(path: str | None) -> int:
    cfg = _load(path)
    if cfg is None:
        return 2
    sys.stdout.write(yaml.safe_dump(config.effective(cfg), sort_keys=False))
    return 0


def serve(path: str | None) -> int:
    cfg = _load(path)
    if cfg is None:
        return 2
    logs.configure(cfg.log.format, cfg.log.level)
    workers = usable_cpus() if cfg.workers == "auto" else cfg.workers
    if workers > 1:
        return run(_supervise(cfg, workers))
    return run(_serve(cfg))


async def _started(gateway: Gateway) -> bool:
    """Start `gateway`; False (logged, and what had started stopped) when it cannot."""
    try:
        await gateway.start()
    except StartupError as exc:
        log.error("startup_failed", message=str(exc))
        await gateway.stop()
        return False
    # What start-up made lives as long as the process: out of the collector's way, so
    # that the full collections that traffic triggers do not walk it each time.
    gc.freeze()
    return True


async def _serve(cfg: config.Config) -> int:
    gateway = Gateway(cfg)
    if not await _started(gateway):
        return 1
    async with Reloader(gateway.node).running():
        await gateway.serve_until_signalled()
    return 0


async def _supervise(cfg: config.Config, workers: int) -> int:
    from gateproxy.workers.supervisor import Supervisor

    try:
        await Supervisor(cfg, workers).run()
    except StartupError as exc:
        log.error("startup_failed", message=str(exc))
        return 1
    return 0


def work(args: argparse.Namespace) -> int:
    """One worker of a supervisor: the proxy's port, following the supervisor."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    log.configure(extra={"worker": args.index})
    logs.configure(cfg.log.format, cfg.log.level)
    cfg = dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=args.port))
    return run(_work(cfg, WorkerLink(args.control, args.admin, args.index)))


async def _work(cfg: config.Config, link: WorkerLink) -> int:
    gateway = Gateway(cfg, worker=link)
    if not await _started(gateway):
        return 1
    reloader = Reloader(gateway.node)
    await link.start(gateway.node.stats, lambda: reloader.reload("supervisor"))
    # The supervisor decides when to stop (a terminal's Ctrl-C reaches the whole group).
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: None)
    await link.closed.wait()
    await gateway.stop(0.0)
    await link.close()
    return 0


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU limit
    (a Kubernetes `limits.cpu`), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read
    return max(1, cpus)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, unless GATEPROXY_UVLOOP=0."""
    factory = None
    if os.environ.get("GATEPROXY_UVLOOP", "1") != "0":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(main)
        except KeyboardInterrupt:
            return 130
