"""The command line: `serve`, `check-config`, `demo` (contract section 2).

Exit codes: 0 normal end, 1 cannot start (port taken, required dependency down),
2 bad configuration or an unsafe environment.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import yaml

from gateproxy import __version__, config, logs
from gateproxy.aio import check
from gateproxy.app import Gateway, StartupError
from gateproxy.logs import log
from gateproxy.reload import Reloader


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
    unsafe = check.parser_problem()
    if unsafe:
        print(f"gateproxy: refusing to start: {unsafe}", file=sys.stderr)
        return 2
    if command == "demo":
        from gateproxy import demo

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
    return run(_serve(cfg))


async def _serve(cfg: config.Config) -> int:
    gateway = Gateway(cfg)
    try:
        await gateway.start()
    except StartupError as exc:
        log.error("startup_failed", message=str(exc))
        await gateway.stop()
        return 1
    # What start-up made lives as long as the process: out of the collector's way, so
    # that the full collections that traffic triggers do not walk it each time.
    gc.freeze()
    async with Reloader(gateway).running():
        await gateway.serve_until_signalled()
    return 0


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
