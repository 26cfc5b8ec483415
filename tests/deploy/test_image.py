"""The real image: built with podman from the Dockerfile as it is, then run and stopped.

No container registry is reachable here, so the base comes from deploy/base-image.sh
(Debian bookworm from Debian's mirror, cached in podman's storage once built) and reaches
the Dockerfile as PYTHON_IMAGE. pip inside the build trusts this machine's CA bundle, given
as a build secret (the Dockerfile's documented way), so it never lands in a layer.

Podman's options are this machine's facts, not the image's: runc (crun refuses the
hybrid cgroup v1/v2 layout: "cgroups in hybrid mode not supported"); ulimits within this
process's own hard limits (without CAP_SYS_RESOURCE podman's defaults cannot be set);
docker format (OCI drops HEALTHCHECK); no healthcheck timer (no systemd here, so
`podman healthcheck run` is called instead). Skipped only where podman or debootstrap is
absent; .ci/run installs both.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateproxy.demo.standins import StandIn
from tests.support.ports import free_port
from tests.support.standins import Recorder

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TAG = "localhost/gateproxy:image-test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
UID = 10001

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("podman") and shutil.which("debootstrap")),
                       reason="podman and debootstrap are not installed (.ci/run installs them)"),
]


def ulimits() -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={soft}:{hard}", "--ulimit", "nproc=4096:4096"]


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


def size_budget_mb() -> int:
    """The budget deploy/README.md states, so that the document and the check agree."""
    found = re.search(r"size budget of (\d+) MB", (DEPLOY / "README.md").read_text())
    assert found, "deploy/README.md states the image's `size budget of N MB`"
    return int(found.group(1))


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    started = time.monotonic()
    base = subprocess.run([str(DEPLOY / "base-image.sh")], capture_output=True, text=True,
                          timeout=900, check=False)
    assert base.returncode == 0, base.stderr[-4000:]
    built = time.monotonic()
    secret = ["--secret", f"id=pip_ca,src={HOST_CA}"] if HOST_CA.exists() else []
    # --layers=false: no intermediate images left behind (the pip RUN, with its secret
    # mount, is never reused from the cache anyway); only the base stays cached.
    podman("build", "--layers=false", "--format", "docker", *ulimits(), *secret,
           "--build-arg", f"PYTHON_IMAGE={base.stdout.strip()}", "--tag", TAG, str(ROOT),
           timeout=900)
    print(f"base image {base.stdout.strip()}: {built - started:.0f} s; "
          f"image: {time.monotonic() - built:.0f} s")
    yield TAG
    podman("rmi", "--force", TAG, check=False)


def test_image_stays_under_its_size_budget(image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"image size: {size / 1e6:.0f} MB")
    assert size <= size_budget_mb() * 1_000_000, f"{size / 1e6:.0f} MB"


def test_runtime_venv_has_no_installer_and_is_precompiled(image: str) -> None:
    probe = ("import importlib.util as u, json, sys; print(json.dumps({"
             "'prefix': sys.prefix, 'found': [m for m in ('pip', 'setuptools', 'pkg_resources')"
             " if u.find_spec(m)], 'cached': u.find_spec('gateproxy.serve.gateway').cached}))")
    done = podman("run", "--rm", "--read-only", *ulimits(), "--entrypoint", "python", image,
                  "-c", probe)
    facts = json.loads(done.stdout)
    assert facts["prefix"] == "/opt/gateproxy"
    assert facts["found"] == [], "the runtime venv carries no pip or setuptools"
    ls = podman("run", "--rm", *ulimits(), "--entrypoint", "python", image, "-c",
                f"import os; print(os.path.exists({facts['cached']!r}))")
    assert ls.stdout.strip() == "True", "bytecode is compiled at build time"


def exec_in(name: str, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return podman("exec", *(["--user", user] if user else []), name, *argv, check=False)


async def test_image_runs_read_only_gates_forwards_and_stops_cleanly(
        image: str, recorder: tuple[Recorder, StandIn], http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    rec, upstream = recorder
    shipped = yaml.safe_load((DEPLOY / "gateproxy.yaml").read_text())
    proxy_port, admin_port = free_port(), free_port()
    # The shipped file with only what an operator changes for host networking: ports, the
    # upstream stand-in, and a docker-runner address where nothing listens (so: gated).
    config = {**shipped, "listen": {"host": "127.0.0.1", "port": proxy_port},
              "admin_port": admin_port, "upstream": {**shipped["upstream"], "url": upstream.url}}
    config["dependencies"][0]["base_url"] = f"http://127.0.0.1:{free_port()}"
    mounted = tmp_path / "gateproxy.yaml"
    mounted.write_text(yaml.safe_dump(config))
    mounted.chmod(0o644)
    grace = shipped["shutdown_delay_ms"] / 1000 + shipped["shutdown_grace_ms"] / 1000 + 10
    name = f"gateproxy-image-test-{proxy_port}"
    live = f"http://127.0.0.1:{admin_port}{shipped['admin_prefix']}/live"
    podman("run", "--detach", "--name", name, "--network", "host", "--read-only",
           "--health-interval", "disable", *ulimits(), "--env", f"GATEPROXY_HEALTHCHECK_URL={live}",
           "--env", "DOCKER_RUNNER_SHARED_SECRET=not-a-real-secret",
           "--volume", f"{mounted}:/etc/gateproxy/gateproxy.yaml:ro", image)
    try:
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(podman, "healthcheck", "run", name, check=False)
               ).returncode != 0:
            running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            assert running == "true", podman("logs", name).stderr[-3000:]
            assert time.monotonic() < deadline, "HEALTHCHECK did not pass in 30 s"
            await asyncio.sleep(0.5)

        # The image runs `workers: auto`: ready once a worker listens on the proxy's port.
        ready = live.removesuffix("/live") + "/ready"
        while True:
            async with http.get(ready) as resp:
                if resp.status == 200:
                    break
            assert time.monotonic() < deadline, "not ready in 30 s"
            await asyncio.sleep(0.2)

        uid = exec_in(name, "python", "-c",
                      "print([l.split()[1] for l in open('/proc/1/status') if l[:4] == 'Uid:'][0])")
        assert uid.stdout.strip() == str(UID), uid.stdout + uid.stderr
        write = exec_in(name, "touch", "/opt/gateproxy/x", user="0")
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write

        base = f"http://127.0.0.1:{proxy_port}"
        async with http.get(f"{base}/api/containers") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "docker_runner_not_ready"
        async with http.get(f"{base}/api/threads") as resp:
            assert resp.status == 200
            assert (await resp.json())["items"][0]["id"] == "t1"
        assert ("GET", "/api/threads") in rec.seen
        assert ("GET", "/api/containers") not in rec.seen, "a gated request reached upstream"

        started = time.monotonic()
        await asyncio.to_thread(podman, "stop", "--time", str(int(grace)), name,
                                timeout=grace + 30)
        took = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", podman("logs", name).stderr[-3000:]
        assert took < grace, f"stopped after {took:.1f} s, grace period {grace:.0f} s"
        print(f"stopped in {took:.1f} s (grace {grace:.0f} s)")
    finally:
        podman("rm", "--force", name, check=False)
