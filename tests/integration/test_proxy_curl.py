"""curl, an independent HTTP client, through a real gateway: streaming download,
HTTP/1.1, `-T` uploads (curl's own `Expect: 100-continue`), chunked uploads from stdin,
compressed bytes untouched."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway
from tests.support import upstream_app

# Not a skip: without curl this proof is missing, and that must show as a failure.
CURL = shutil.which("curl")


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    upstream = StandIn(upstream_app.app())
    await upstream.start()
    gw = await upstream_app.start_gateway(upstream.url)
    yield gw
    await gw.stop()
    await upstream.stop()


async def curl(*args: str, stdin: bytes | None = None) -> tuple[bytes, bytes]:
    assert CURL is not None, "curl is not installed"
    proc = await asyncio.create_subprocess_exec(
        CURL, "--silent", "--show-error", "--http1.1", "--max-time", "20", *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    assert proc.returncode == 0, err.decode()
    return out, err


def url(gateway: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gateway.port}{path}"


async def test_curl_streams_a_download_as_it_comes(gateway: Gateway) -> None:
    assert CURL is not None
    proc = await asyncio.create_subprocess_exec(
        CURL, "--silent", "--http1.1", "--no-buffer", "--max-time", "20",
        url(gateway, "/sse?count=3&interval=0.4"), stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    started = time.monotonic()
    first = await asyncio.wait_for(proc.stdout.readuntil(b"\n\n"), 5)
    first_at = time.monotonic() - started
    rest = await proc.stdout.read()
    await proc.wait()
    assert first.startswith(b"id: 0\nevent: tick\n")
    assert first_at < 0.35, first_at  # not held until the 0.8 s stream ends
    assert rest.count(b"event: tick") == 2


async def test_curl_downloads_large_bodies_intact(gateway: Gateway) -> None:
    for path, size in (("/bytes/5000000", 5_000_000), ("/chunked/3000001?piece=4096", 3_000_001)):
        out, _ = await curl(url(gateway, path))
        assert hashlib.sha256(out).digest() == hashlib.sha256(
            upstream_app.pattern(size)).digest()


async def test_curl_upload_with_expect_100_continue(gateway: Gateway, tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    data = upstream_app.pattern(6 * 1024 * 1024)
    upload.write_bytes(data)
    out, err = await curl("--verbose", "-T", str(upload), "-H", "Expect: 100-continue",
                          url(gateway, "/echo/upload"))
    seen = json.loads(out)
    assert seen["method"] == "PUT"
    assert seen["bodySize"] == len(data)
    assert seen["bodySha256"] == hashlib.sha256(data).hexdigest()
    assert b"HTTP/1.1 100 Continue" in err
    assert not any(k.lower() == "expect" for k, _ in seen["headers"])


async def test_curl_chunked_upload_from_stdin(gateway: Gateway) -> None:
    data = upstream_app.pattern(2_500_000)
    out, _ = await curl("-T", "-", "-X", "POST", url(gateway, "/echo/stdin"), stdin=data)
    seen = json.loads(out)
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["transfer-encoding"] == "chunked"
    assert seen["bodySize"] == len(data)
    assert seen["bodySha256"] == hashlib.sha256(data).hexdigest()


async def test_curl_gets_compressed_bytes_untouched(gateway: Gateway) -> None:
    for coding, packed in (("gzip", upstream_app.GZIPPED), ("br", upstream_app.BROTLI)):
        out, _ = await curl("-H", f"Accept-Encoding: {coding}", url(gateway,
                                                                    f"/encoded/{coding}"))
        assert out == packed
        decoded, _ = await curl("--compressed", url(gateway, f"/encoded/{coding}"))
        assert decoded == upstream_app.TEXT


async def test_curl_sees_every_set_cookie(gateway: Gateway) -> None:
    out, _ = await curl("--include", url(gateway, "/cookies"))
    head = out.split(b"\r\n\r\n", 1)[0].decode()
    cookies = [line for line in head.split("\r\n") if line.lower().startswith("set-cookie:")]
    assert cookies == ["Set-Cookie: a=1; Path=/; HttpOnly",
                       "Set-Cookie: b=2; Path=/api; Secure; SameSite=Lax",
                       "Set-Cookie: c=three, with comma; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
