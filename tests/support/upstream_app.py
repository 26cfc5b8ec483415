"""A rich stand-in upstream for the forwarding tests: every kind of answer a proxy can
get wrong, on a real aiohttp server.

`/echo` answers with what arrived (method, target, raw headers in order, body digest),
so that a test can compare what the upstream saw directly and through the proxy.
Everything else is deterministic, so that two requests get byte-identical answers.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import zlib

import brotli  # type: ignore[import-untyped]
from aiohttp import WSMsgType, hdrs, web

from gateproxy import config
from gateproxy.serve.gateway import Gateway

TEXT = ("Transparency means the client cannot tell the proxy is there. " * 64).encode()
GZIPPED = gzip.compress(TEXT, mtime=0)
BROTLI = brotli.compress(TEXT)
DEFLATED = zlib.compress(TEXT)
BLOB = bytes(range(256)) * 4096  # 1 MiB, for Range requests
ETAG = '"v1-abc"'


def pattern(size: int) -> bytes:
    """`size` deterministic bytes."""
    return (BLOB * (size // len(BLOB) + 1))[:size]


class Bare(web.StreamResponse):
    """Like a Node server: no Server header, no Content-Type unless the handler set one."""

    async def _prepare_headers(self) -> None:
        had_type = hdrs.CONTENT_TYPE in self._headers
        await super()._prepare_headers()
        self._headers.popall(hdrs.SERVER, None)
        if not had_type:
            self._headers.popall(hdrs.CONTENT_TYPE, None)


async def echo(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    seen = {
        "method": request.method,
        "target": request.raw_path,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "bodySize": size,
        "bodySha256": digest.hexdigest(),
    }
    status = int(request.query.get("status", "200"))
    return web.Response(status=status, body=json.dumps(seen).encode(),
                        content_type="application/json")


async def status(request: web.Request) -> web.StreamResponse:
    code = int(request.match_info["code"])
    headers = {"X-Status": str(code)}
    if code in (301, 302, 303, 307, 308):
        headers["Location"] = "/echo?from=redirect"
    if code in (204, 304):
        return web.Response(status=code, headers=headers)
    return web.Response(status=code, body=f"status {code}\n".encode(), headers=headers,
                        content_type="text/plain")


async def sized(request: web.Request) -> web.Response:
    return web.Response(body=pattern(int(request.match_info["size"])),
                        content_type="application/octet-stream")


async def chunked(request: web.Request) -> web.StreamResponse:
    """A body of unknown length, sent in pieces (chunked on the wire)."""
    size = int(request.match_info["size"])
    piece = int(request.query.get("piece", "8192"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    if request.method == "HEAD":
        # aiohttp would send the bytes even so, which no client could parse.
        await resp.write_eof()
        return resp
    data = pattern(size)
    for start in range(0, size, piece):
        await resp.write(data[start:start + piece])
    await resp.write_eof()
    return resp


async def encoded(request: web.Request) -> web.Response:
    coding = request.match_info["coding"]
    body = {"gzip": GZIPPED, "br": BROTLI, "deflate": DEFLATED}[coding]
    return web.Response(body=body, headers={"Content-Encoding": coding,
                                            "Vary": "Accept-Encoding",
                                            "Content-Type": "text/plain; charset=utf-8"})


async def encoded_stream(request: web.Request) -> web.StreamResponse:
    """gzip, streamed without a length (chunked), as compression middlewares do."""
    resp = web.StreamResponse(headers={"Content-Encoding": "gzip",
                                       "Content-Type": "text/plain"})
    await resp.prepare(request)
    for start in range(0, len(GZIPPED), 100):
        await resp.write(GZIPPED[start:start + 100])
    await resp.write_eof()
    return resp


async def cookies(_: web.Request) -> web.Response:
    resp = web.Response(text="cookies")
    resp.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
    resp.headers.add("Set-Cookie", "b=2; Path=/api; Secure; SameSite=Lax")
    resp.headers.add("Set-Cookie", "c=three, with comma; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
    resp.headers.add("X-Repeated", "one")
    resp.headers.add("X-Repeated", "two")
    return resp


async def ranged(request: web.Request) -> web.Response:
    headers = {"Accept-Ranges": "bytes", "ETag": ETAG, "Content-Type": "application/octet-stream"}
    spec = request.headers.get(hdrs.RANGE)
    if not spec or not spec.startswith("bytes="):
        return web.Response(body=BLOB, headers=headers)
    first, _, last = spec[6:].partition("-")
    total = len(BLOB)
    if not first:
        start, end = total - int(last), total - 1
    else:
        start, end = int(first), min(int(last) if last else total - 1, total - 1)
    if start >= total or start > end:
        headers["Content-Range"] = f"bytes */{total}"
        return web.Response(status=416, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    return web.Response(status=206, body=BLOB[start:end + 1], headers=headers)


async def conditional(request: web.Request) -> web.Response:
    headers = {"ETag": ETAG, "Cache-Control": "max-age=60"}
    if request.headers.get(hdrs.IF_NONE_MATCH) == ETAG:
        return web.Response(status=304, headers=headers)
    return web.Response(text="fresh", headers=headers)


async def sse(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("count", "5"))
    interval = float(request.query.get("interval", "0.01"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for n in range(count):
        await resp.write(f"id: {n}\nevent: tick\ndata: {{\"n\": {n}}}\n\n".encode())
        await asyncio.sleep(interval)
    await resp.write_eof()
    return resp


async def long_poll(request: web.Request) -> web.Response:
    """Socket.IO-style long-polling: the answer comes after a wait."""
    await asyncio.sleep(int(request.query.get("wait", "100")) / 1000)
    sid = request.query.get("sid", "new")
    return web.Response(text=f'0{{"sid":"{sid}","pingInterval":25000}}',
                        content_type="text/plain", charset="UTF-8")


async def bare(request: web.Request) -> web.StreamResponse:
    """No Server, no Content-Type: what a Node upstream sends for a raw body."""
    resp = Bare(headers={"X-Bare": "1"})
    if request.match_info["kind"] == "length":
        resp.content_length = len(TEXT)
    await resp.prepare(request)
    if request.method != "HEAD":
        await resp.write(TEXT)
    await resp.write_eof()
    return resp


async def custom_reason(_: web.Request) -> web.Response:
    return web.Response(status=299, reason="Odd But Fine", text="odd")


async def hop_by_hop(_: web.Request) -> web.Response:
    """Response hop-by-hop headers, and a header named in Connection: all dropped."""
    return web.Response(text="hop", headers={
        "Connection": "X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
        "Proxy-Authenticate": "Basic", "Trailer": "X-Checksum", "X-Public": "yes"})


async def slow_headers(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "5")))
    return web.Response(text="late")


# Downloads of /endless in progress: a proxy that keeps abandoned ones going leaks.
ENDLESS_ACTIVE = [0]


async def endless(request: web.Request) -> web.StreamResponse:
    """A download that never ends (until the client goes away)."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    piece = pattern(16384)
    ENDLESS_ACTIVE[0] += 1
    try:
        while True:
            await resp.write(piece)
            await asyncio.sleep(0.001)
    finally:
        ENDLESS_ACTIVE[0] -= 1


# Uploads to /sink in progress.
SINK_ACTIVE = [0]


async def sink(request: web.Request) -> web.Response:
    """Reads an upload to its end, however long it takes."""
    SINK_ACTIVE[0] += 1
    try:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(text=str(size))
    finally:
        SINK_ACTIVE[0] -= 1


async def peer(request: web.Request) -> web.Response:
    """The port the request came from: the same port twice is a reused connection."""
    assert request.transport is not None
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))


async def stall(request: web.Request) -> web.StreamResponse:
    """Headers, a little body, then silence."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(b"first part")
    await asyncio.sleep(float(request.query.get("delay", "5")))
    await resp.write_eof()
    return resp


async def cut(request: web.Request) -> web.StreamResponse:
    """Promises 1000 bytes, sends 10, then drops the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "text/plain", "Content-Length": "1000"})
    await resp.prepare(request)
    await resp.write(b"0123456789")
    assert request.transport is not None
    request.transport.abort()
    return resp


# What the WebSocket peer saw end its sessions: (close code, reason) per session.
WS_ENDINGS: list[tuple[int | None, str]] = []
# Messages of a `flood` sent so far: how far a client that does not read lets it get.
FLOOD_SENT = [0]


async def ws_handler(request: web.Request) -> web.StreamResponse:
    """A scripted WebSocket peer. Text commands: `close:<code>:<reason>`,
    `ping:<data>`, `pong:<data>`, `big:<n>`, `burst:<n>`, `flood:<n>` (n 1 MiB
    messages); other messages are echoed."""
    if request.query.get("refuse"):
        return web.json_response({"error": "no"}, status=int(request.query["refuse"]),
                                 headers={"X-Refused": "yes"})
    ws = web.WebSocketResponse(protocols=("chat", "superchat"), autoping=True,
                               max_msg_size=32 * 1024 * 1024)
    ws.headers["X-Upstream-Ws"] = "yes"
    ws.headers.add("Set-Cookie", "ws=1; Path=/")
    await ws.prepare(request)
    await ws.send_str(json.dumps({"hello": request.query_string,
                                  "cookie": request.headers.get("Cookie"),
                                  "origin": request.headers.get("Origin"),
                                  "auth": request.headers.get("Authorization")}))
    ending: tuple[int | None, str] = (None, "")
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            command, _, arg = msg.data.partition(":")
            if command == "close":
                code, _, reason = arg.partition(":")
                await ws.close(code=int(code), message=reason.encode())
                ending = (ws.close_code, "reply")
                break
            if command == "ping":
                await ws.ping(arg.encode())
            elif command == "pong":
                await ws.pong(arg.encode())
            elif command == "big":
                await ws.send_bytes(pattern(int(arg)))
            elif command == "burst":
                for n in range(int(arg)):
                    await ws.send_str(f"burst {n}")
            elif command == "flood":
                FLOOD_SENT[0] = 0
                blob = pattern(1024 * 1024)
                for _ in range(int(arg)):
                    await ws.send_bytes(blob)
                    FLOOD_SENT[0] += 1
            else:
                await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            ending = (msg.data, msg.extra or "")
            break
        else:
            ending = (ws.close_code, msg.type.name)
            break
    WS_ENDINGS.append(ending)
    return ws


def app() -> web.Application:
    application = web.Application(client_max_size=0)
    r = application.router
    r.add_route("*", "/echo", echo)
    r.add_route("*", "/echo/{tail:.*}", echo)
    r.add_route("*", "/status/{code}", status)
    r.add_get("/bytes/{size}", sized)
    r.add_get("/chunked/{size}", chunked)
    r.add_get("/encoded/{coding}", encoded)
    r.add_get("/encoded-stream", encoded_stream)
    r.add_get("/cookies", cookies)
    r.add_get("/range", ranged)
    r.add_get("/conditional", conditional)
    r.add_get("/sse", sse)
    r.add_route("*", "/socket.io/", long_poll)
    r.add_get("/bare/{kind}", bare)
    r.add_get("/reason", custom_reason)
    r.add_get("/hop", hop_by_hop)
    r.add_get("/slow", slow_headers)
    r.add_get("/endless", endless)
    r.add_get("/peer", peer)
    r.add_post("/sink", sink)
    r.add_get("/stall", stall)
    r.add_get("/cut", cut)
    r.add_get("/ws", ws_handler)
    return application


# --- running it, and a gateway in front of it -----------------------------------------

def gateway_env(upstream_url: str, **extra: str) -> dict[str, str]:
    """A gateway on an ephemeral loopback port in front of `upstream_url`; the default
    docker-runner is left unreachable (its gated routes are not used by these tests)."""
    env = {
        "GATEPROXY_HOST": "127.0.0.1",
        "GATEPROXY_PORT": "0",
        "PLATFORM_SERVER_URL": upstream_url,
        "DOCKER_RUNNER_BASE_URL": "http://127.0.0.1:9",
        "GATEPROXY_LOG_LEVEL": "CRITICAL",
    }
    env.update(extra)
    return env


async def start_gateway(upstream_url: str, yaml_path: str | None = None,
                        **extra: str) -> Gateway:
    gateway = Gateway(config.load(yaml_path, env=gateway_env(upstream_url, **extra)))
    await gateway.start()
    return gateway


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
