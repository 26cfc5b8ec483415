"""The status page: what it serves, and in real headless Chromium that its badge and its
availability strip follow docker-runner down and back up, and its cards follow reloaded
dependencies, without a reload of the page.

The browser test drives Debian's chromium over the DevTools protocol (a WebSocket, with
aiohttp's client) and saves screenshots under artifacts/. It installs nothing; it is
skipped only where chromium is absent (CI installs it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateproxy import config
from gateproxy.demo.standins import StandIn
from gateproxy.serve.reload import apply
from tests.support.gateways import MakeGateway, env_for, url
from tests.support.png import Png
from tests.support.ports import free_port
from tests.support.standins import Recorder, StartStandIn
from tests.support.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
BADGE = 'document.querySelector(\'[data-dep="docker-runner"] [data-f="status"]\')'
CARD = 'document.querySelector(\'[data-dep="docker-runner"]\')'
RGB = tuple[int, int, int]


async def test_the_page_is_self_contained_and_carries_the_state(
        recorder: tuple[Recorder, StandIn], make_gateway: MakeGateway,
        http: aiohttp.ClientSession) -> None:
    _, upstream = recorder
    gateway = await make_gateway(env_for(upstream, f"http://127.0.0.1:{free_port()}"))
    async with http.get(url(gateway, "/_gateproxy/status")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Cache-Control"] == "no-store"
        assert "connect-src 'self'" in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    links = re.findall(r'(?:src|href|action)="([^"]*)"', page)
    assert links and all(link.startswith(("/_gateproxy/", "data:")) for link in links), links
    assert '<meta name="viewport"' in page
    embedded = re.search(r'<script type="application/json" id="initial">(.*?)</script>',
                         page, re.S)
    assert embedded is not None
    state = json.loads(embedded.group(1))
    assert [d["name"] for d in state["dependencies"]] == ["docker-runner"]
    assert state["dependencies"][0]["gatedRoutes"] == [
        {"prefix": "/api/containers", "methods": None}]
    assert state["config"]["version"] == 1


async def test_status_json_carries_the_last_hour_and_request_counts(
        start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    from gateproxy.demo.standins import docker_runner

    _, upstream = recorder
    runner = await start_standin(docker_runner())
    gateway = await make_gateway(env_for(upstream, runner.url))
    status = gateway.node.guards[0].status
    for _ in range(2):
        async with http.get(url(gateway, "/api/threads")) as resp:
            assert resp.status == 200
    await asyncio.sleep(1.2)  # the probe chart keeps one point a second: up gets its own
    await runner.stop()
    await wait_for(lambda: not status.is_up)
    for _ in range(3):
        async with http.post(url(gateway, "/api/containers"), data=b"{}") as resp:
            assert resp.status == 503
    async with http.get(url(gateway, "/_gateproxy/status.json")) as resp:
        state = await resp.json()
    assert state["forwardedRequests"] == {"last5m": 2, "last60m": 2}
    dep = state["dependencies"][0]
    assert dep["gatedRequests"] == {"last5m": 3, "last60m": 3}
    hour = dep["lastHour"]
    assert state["startedAt"] <= hour["from"] <= state["now"]  # from the first probe on
    spans = hour["spans"]
    assert [s["state"] for s in spans] == ["up", "down"]
    assert spans[0]["startS"] == 0 and spans[0]["endS"] == spans[1]["startS"]
    assert spans[1]["endS"] > spans[1]["startS"]
    probes = hour["probes"]
    assert {p["ok"] for p in probes} == {True, False}
    assert all(0 <= p["atS"] <= spans[-1]["endS"] for p in probes)
    assert all(isinstance(p["durationMs"], int) for p in probes)
    # The page starts from the same data.
    async with http.get(url(gateway, "/_gateproxy/status")) as resp:
        page = await resp.text()
    embedded = re.search(r'<script type="application/json" id="initial">(.*?)</script>',
                         page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1))["dependencies"][0]["gatedRequests"] == {
        "last5m": 3, "last60m": 3}


class DevTools:
    """A minimal DevTools protocol client: commands by id, events kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(20):
            while True:
                message = await self.ws.receive_json()
                if message.get("id") == call_id:
                    assert "error" not in message, message
                    result: dict[str, Any] = message["result"]
                    return result
                self.events.append(message)

    async def eval(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True)
        assert "exceptionDetails" not in answer, answer
        return answer["result"].get("value")

    async def until(self, expression: str, expected: Any, timeout: float = 10.0) -> None:
        for _ in range(round(timeout / 0.1)):
            last = await self.eval(expression)
            if last == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression} is {last!r}, not {expected!r}, after {timeout} s")

    async def screenshot(self, name: str) -> Png:
        # The page as far as it goes (within the viewport), without the blank below it.
        height = await self.eval("Math.min(Math.ceil(document.body.getBoundingClientRect()"
                                 ".bottom), window.innerHeight)")
        width = await self.eval("window.innerWidth")
        shot = await self.call("Page.captureScreenshot", format="png", clip={
            "x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        ARTIFACTS.mkdir(exist_ok=True)
        data = base64.b64decode(shot["data"])
        (ARTIFACTS / name).write_bytes(data)
        return Png(data)

    async def colour(self, name: str) -> RGB:
        """The page's CSS colour variable `--name` (a #rrggbb), as it resolves now."""
        value = await self.eval(
            f"getComputedStyle(document.documentElement).getPropertyValue('--{name}')")
        assert re.fullmatch(r"#[0-9a-f]{6}", value.strip()), value
        r, g, b = bytes.fromhex(value.strip()[1:])
        return r, g, b

    async def strip(self, shot: Png) -> list[RGB]:
        """The colours along the middle of docker-runner's availability strip in `shot`,
        left to right (device scale 1: CSS pixels are screenshot pixels)."""
        box = await self.eval(f"(() => {{ const r = {CARD}.querySelector('[data-f=strip]')"
                              ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height];"
                              " })()")
        x, y, width, height = (round(v) for v in box)
        assert width > 300 and height > 10, box
        # Inset by the rounded corners.
        return [shot.pixel(i, y + height // 2) for i in range(x + 4, x + width - 4)]


@contextlib.asynccontextmanager
async def chromium(http: aiohttp.ClientSession) -> AsyncIterator[DevTools]:
    with tempfile.TemporaryDirectory(prefix="gateproxy-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        drain: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(30):
                while True:
                    line = (await proc.stderr.readline()).decode()
                    assert line, "chromium ended before opening DevTools"
                    found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                    if found:
                        break
            # Keep reading its stderr so that chromium never blocks on a full pipe.
            drain = asyncio.get_running_loop().create_task(_discard(proc.stderr))
            async with http.get(f"http://127.0.0.1:{found.group(1)}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    async with asyncio.timeout(10):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            if drain is not None:
                await drain


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} is not installed (Debian package chromium; CI has it)")
async def test_badge_follows_docker_runner_without_a_reload(
        tmp_path: Path, start_standin: StartStandIn, recorder: tuple[Recorder, StandIn],
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    from gateproxy.demo.standins import docker_runner

    _, upstream = recorder
    runner = await start_standin(docker_runner())
    env = env_for(upstream, runner.url)
    gateway = await make_gateway(env)
    status = gateway.node.guards[0].status
    await wait_for(lambda: status.is_up)
    base = url(gateway, "")
    async with chromium(http) as browser:
        await browser.call("Network.enable")
        await browser.call("Emulation.setDeviceMetricsOverride", width=960, height=1000,
                           deviceScaleFactor=1, mobile=False)
        await browser.call("Page.navigate", url=f"{base}/_gateproxy/status")
        await browser.until(f"{BADGE}?.textContent", "up")
        marker = await browser.eval("window.__sameDocument = Math.random()")
        up, down = await browser.colour("up"), await browser.colour("down")
        for _ in range(2):
            async with http.get(f"{base}/api/threads") as resp:
                assert resp.status == 200
        forwarded = "document.getElementById('forwarded').textContent"
        await browser.until(forwarded, "2 in 5 min · 2 in 60 min")
        await asyncio.sleep(2)  # some history for the strip and the probe chart
        strip = await browser.strip(await browser.screenshot("status-page-up.png"))
        assert set(strip) == {up}, "all of the strip is up"
        assert await browser.eval(f"{CARD}.querySelector('[data-f=upShare]').textContent"
                                  ) == "100% up"
        assert await browser.eval(f"{CARD}.querySelector('[data-f=spark] polyline')"
                                  ".points.length") >= 2

        await runner.stop()
        await browser.until(f"{BADGE}.textContent", "down")
        assert await browser.eval(f"{BADGE}.className") == "badge down"
        assert await browser.eval("window.__sameDocument") == marker, "the page reloaded"
        for _ in range(3):
            async with http.post(f"{base}/api/containers", data=b"{}") as resp:
                assert resp.status == 503
        await browser.until(f"{CARD}.querySelector('[data-f=gatedRequests]').textContent",
                            "3 in 5 min · 3 in 60 min")
        assert await browser.eval("document.getElementById('gated').textContent") == (
            "3 in 5 min · 3 in 60 min")
        last_error = await browser.eval(f"{CARD}.querySelector('[data-f=lastError]')"
                                        ".textContent")
        assert last_error.startswith("connection_refused: ")
        newest = await browser.eval(f"{CARD}.querySelector('[data-f=transitions] li')"
                                    ".textContent")
        assert "up → down" in newest and "connection_refused" in newest
        assert await browser.eval(f"{CARD}.querySelector('[data-f=routes]').textContent"
                                  ) == "/api/containers"
        assert await browser.eval("document.getElementById('overall').textContent") == (
            "1 not up")
        failed = await browser.eval(f"{CARD}.querySelector('[data-f=spark] path.p-fail')"
                                    ".getAttribute('d')")
        assert re.match(r"M[\d.]+,100V70", failed), "failed probes are marked"
        await asyncio.sleep(2)
        strip = await browser.strip(await browser.screenshot("status-page-down.png"))
        assert strip[0] == up and strip[-1] == down, "up, then down until now"
        assert set(strip) == {up, down}
        # The same in the dark scheme: its own colours, on a dark page.
        await browser.call("Emulation.setEmulatedMedia", features=[
            {"name": "prefers-color-scheme", "value": "dark"}])
        dark_up, dark_down = await browser.colour("up"), await browser.colour("down")
        assert (dark_up, dark_down) != (up, down)
        shot = await browser.screenshot("status-page-dark.png")
        strip = await browser.strip(shot)
        assert strip[0] == dark_up and strip[-1] == dark_down
        assert sum(shot.pixel(5, 5)) < 3 * 64, "a dark background"
        await browser.call("Emulation.setEmulatedMedia", features=[])
        await browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844,
                           deviceScaleFactor=2, mobile=True)
        await asyncio.sleep(0.3)
        assert await browser.eval(
            "document.documentElement.scrollWidth <= window.innerWidth"), (
            "no sideways scrolling on a phone")
        await browser.screenshot("status-page-phone.png")
        await browser.call("Emulation.setDeviceMetricsOverride", width=960, height=1000,
                           deviceScaleFactor=1, mobile=False)

        await runner.start()
        await browser.until(f"{BADGE}.textContent", "up")
        assert await browser.eval(f"{BADGE}.className") == "badge up"
        assert await browser.eval("window.__sameDocument") == marker, "the page reloaded"
        assert await browser.eval("document.getElementById('overall').textContent") == (
            "all up")
        await asyncio.sleep(2)
        strip = await browser.strip(await browser.screenshot("status-page-recovered.png"))
        assert strip[0] == up and strip[-1] == up and down in strip, "up, down, up again"
        assert set(strip) == {up, down}
        share = await browser.eval(f"{CARD}.querySelector('[data-f=upShare]').textContent")
        assert re.fullmatch(r"\d\d\.\d% up", share), share

        # A dependency added by a reload gets its card, and loses it when removed.
        two = tmp_path / "two.yaml"
        two.write_text(f"""\
dependencies:
  - name: docker-runner
    health_key: dockerRunner
    base_url: "{runner.url}"
    gated_routes: [/api/containers]
  - name: other-runner
    base_url: "{runner.url}"
    gated_routes: [/api/other]
""")
        await apply(gateway.node, config.load(str(two), env))
        cards = "[...document.querySelectorAll('.dep')].map((c) => c.dataset.dep).join()"
        await browser.until(cards, "docker-runner,other-runner")
        await apply(gateway.node, config.load(None, env))
        await browser.until(cards, "docker-runner")
        assert await browser.eval("window.__sameDocument") == marker, "the page reloaded"

        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
    assert f"{base}/_gateproxy/status.json" in requested, "it polls status.json"
    outside = [u for u in requested if not u.startswith((base + "/", "data:"))]
    assert outside == [], "the page loads nothing from anywhere else"
    for name in ("up", "down", "dark", "phone", "recovered"):
        assert (ARTIFACTS / f"status-page-{name}.png").read_bytes().startswith(b"\x89PNG")
