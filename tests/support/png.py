"""Pixels of a PNG screenshot, decoded with zlib alone (8-bit RGB or RGBA, not
interlaced: what Chromium's screenshots are), so that the browser test needs no imaging
library.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type: RGB, RGBA


class Png:
    def __init__(self, data: bytes) -> None:
        assert data.startswith(SIGNATURE), "not a PNG"
        pos, idat, header = len(SIGNATURE), [], b""
        while pos < len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            chunk = data[pos + 8:pos + 8 + length]
            pos += 12 + length
            if kind == b"IHDR":
                header = chunk
            elif kind == b"IDAT":
                idat.append(chunk)
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
        assert depth == 8 and colour in CHANNELS and interlace == 0, (depth, colour, interlace)
        self.width, self.height = width, height
        self._channels = CHANNELS[colour]
        self._raw = zlib.decompress(b"".join(idat))
        self._rows: list[bytes] = []

    def _row(self, y: int) -> bytes:
        """Row `y`, unfiltered; rows are decoded in order, only as far as asked."""
        n = self._channels
        stride = self.width * n
        while len(self._rows) <= y:
            i = len(self._rows)
            start = i * (stride + 1)
            kind, line = self._raw[start], bytearray(self._raw[start + 1:start + 1 + stride])
            above = self._rows[-1] if self._rows else bytes(stride)
            if kind == 1:
                for x in range(n, stride):
                    line[x] = (line[x] + line[x - n]) & 0xFF
            elif kind == 2:
                line = bytearray((a + b) & 0xFF for a, b in zip(line, above, strict=True))
            elif kind == 3:
                for x in range(stride):
                    left = line[x - n] if x >= n else 0
                    line[x] = (line[x] + ((left + above[x]) >> 1)) & 0xFF
            elif kind == 4:
                for x in range(stride):
                    a = line[x - n] if x >= n else 0
                    b, c = above[x], above[x - n] if x >= n else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    line[x] = (line[x] + pred) & 0xFF
            else:
                assert kind == 0, f"unknown PNG filter {kind}"
            self._rows.append(bytes(line))
        return self._rows[y]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        """The RGB colour at (x, y)."""
        n = self._channels
        r, g, b = self._row(y)[x * n:x * n + 3]
        return r, g, b
