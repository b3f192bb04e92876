"""The limits that keep ``workbench serve`` answering under abuse: decoding memory, slow or
stalled clients and too many connections.

Decoding memory. A small file can hold a huge image (a 7.6 kB PNG of 7900x7900 one-bit pixels
takes 300 MB to decode and convert to RGB), so the size of an upload says nothing about what it
costs. :func:`decode_estimate` reads only the image's header and estimates the bytes that
decoding, converting and resizing it will take (JPEGs are decoded at a reduced scale, about the
model's input size, so they cost little). It opens the image as decoding will, with
``workbench.data.images.open_header``: only the accepted formats (JPEG, PNG, WebP, GIF, BMP,
TIFF), whose decoders allocate what the header says, so an image is estimated before any of it
is decoded, and anything else is refused unread. :class:`DecodeBudget` lets decodes start only
while the estimates of those running fit in a budget shared by all requests, in arrival order. A
request that waits too long is turned away (503), one whose image could never fit is rejected
(400).

The estimates come from measuring the peak memory of ``workbench.data.images.load_array`` per
image mode (``tests/test_serve.py`` checks they still bound it): bytes per pixel of the decoded
image, plus a copy when EXIF orientation will turn it, plus a fixed allowance.

Connections. :func:`guarded_protocol` is uvicorn's HTTP protocol with two additions: a
connection that has not sent its request headers within the upload timeout is closed, and
connections over ``max_connections`` are closed as soon as they are accepted, so a flood of
idle sockets cannot exhaust the open-file limit. That matters more than it seems: asyncio,
out of files, logs a traceback for every accept it retries (thousands a second), starving the
event loop. :func:`connection_limit` keeps the limit under the process's open-file limit, with
room for the few batches of ``ACCEPT_BATCH`` connections accepted before those over the limit
are closed. The body-read timeout and the cap on uploads in progress are applied by the app
(``workbench.deploy.serve``), where the request is known.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import struct
import zlib

from PIL import Image

from workbench._checks import UsageError, check_choice, check_int
from workbench._compat import http_protocol_class
from workbench.data.images import (DEFAULT_MAX_PIXELS, RESIZE_MODES, ImageRejected, draft_jpeg,
                                   open_header)

DEFAULT_DECODE_BUDGET_BYTES = 512 * 1024 * 1024
DEFAULT_DECODE_WAIT = 10.0  # seconds a request may wait for decoding memory before a 503
DEFAULT_UPLOAD_TIMEOUT = 30.0  # seconds to send the request headers, then the body
MAX_UPLOAD_TIMEOUT = 3600.0  # longer would let stalled clients hold connections for ever
DEFAULT_MAX_CONNECTIONS = 128  # open connections at once; half of them may be uploads
# Decoder buffers, the resized copy, the arrays, and the 2 MiB pages the kernel may back them
# with (transparent huge pages: a JPEG decoded at 1/8 scale measured 2.7 MiB here, 5.1 MiB on a
# machine with THP always on).
DECODE_ALLOWANCE_BYTES = 8 * 1024 * 1024
ACCEPT_BATCH = 16  # connections accepted per event-loop turn (uvicorn's backlog option)
# Files kept free under the open-file limit: the listening socket, logs and libraries, plus
# the connections accepted in the few loop turns before those over the limit are closed.
_RESERVED_FILES = 16 + 3 * ACCEPT_BATCH

# Peak bytes per pixel of load_array (decode, conversion to RGB, EXIF rotation, resize) by the
# mode PIL decodes to, measured with ru_maxrss on 2400x2000 images and rounded up by 10-25%.
_BYTES_PER_PIXEL = {
    "1": 6, "L": 6, "P": 6,  # one byte, then 4-byte RGB
    "RGB": 5,  # decoded straight into PIL's 4-byte RGB
    "CMYK": 9, "YCbCr": 9, "LAB": 9, "HSV": 9,  # 4 bytes, converted to another 4
    "LA": 23, "La": 23, "PA": 23, "RGBA": 23, "RGBa": 23,  # composited on white: 5 copies
    "I;16": 60, "I;16L": 60, "I;16B": 60, "I;16N": 60,  # mapped to 8 bits in float64 arrays
    "I": 64, "F": 64,
}
_UNKNOWN_BYTES_PER_PIXEL = 64
_TRANSPARENT_BYTES_PER_PIXEL = {"1": 23, "L": 23, "P": 23, "RGB": 27}  # a colour made
# transparent (PNG tRNS, a GIF's transparent index): composited through RGBA
_ROTATION_BYTES_PER_PIXEL = 4  # EXIF orientation turns the RGB image: a copy
_WEBP_EXTRA_BYTES_PER_PIXEL = 13  # libwebp decodes into its own buffer first
# Pillow inflates a PNG's compressed text (zTXt, iTXt) as it opens it, up to 64 MiB (a 63 kB
# file measured 62 MB), before any estimate could be made, so the service refuses more than this.
MAX_PNG_TEXT_BYTES = 1024 * 1024
_TEXT_BYTES_PER_BYTE = 5  # the inflated bytes, and the str made of them (<= 4 bytes a character)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION = 0x0112  # the EXIF tag
_CHEAPEST_BYTES_PER_PIXEL = min(_BYTES_PER_PIXEL.values())

logger = logging.getLogger("workbench.deploy.serve")


@dataclasses.dataclass(frozen=True)
class DecodeEstimate:
    """What an image's header says about decoding it.

    Attributes:
        width, height: the image's size in its header.
        pixels: ``width * height`` (what a pixel limit applies to).
        decoded_size: ``(width, height)`` actually decoded (smaller for a JPEG decoded at a
            reduced scale).
        mode: the PIL mode it decodes to; format: the PIL format name.
        bytes: the estimated peak memory of decoding, converting and resizing it.
    """

    width: int
    height: int
    decoded_size: tuple[int, int]
    mode: str
    format: str
    bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode_estimate(data: bytes, side: int, resize_mode: str = "squash") -> DecodeEstimate:
    """Estimates the memory ``load_array(data, side, resize_mode)`` needs, from the image's
    header only.

    Args:
        data: the encoded image.
        side: the model's input side (a JPEG is decoded at the smallest power-of-two scale
            that this resize needs, as ``load_array`` does: ``images.draft_jpeg``).
        resize_mode: the model's resize mode (``squash``, ``crop`` or ``pad``).

    Returns:
        A :class:`DecodeEstimate`.

    Raises:
        ImageRejected: the header cannot be read, or the image is in none of
            ``workbench.data.images.ACCEPTED_FORMATS`` (opened the way ``load_array`` opens it,
            so an image without an estimate is never decoded), or a PNG whose compressed text
            inflates to more than :data:`MAX_PNG_TEXT_BYTES` (counted before Pillow inflates
            it); its ``reason`` says which.
        ValueError: ``data`` is not bytes, or ``side`` is not a positive integer.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise UsageError(f"data must be bytes, received: {type(data).__name__}")
    check_int("side", side, minimum=1)
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    text = _png_text_bytes(data, MAX_PNG_TEXT_BYTES) if data[:8] == _PNG_SIGNATURE else 0
    if text > MAX_PNG_TEXT_BYTES:
        raise ImageRejected("decompression bomb", "its compressed text chunks inflate to more "
                            f"than {MAX_PNG_TEXT_BYTES / 2**20:g} MiB")
    with open_header(data) as image:
        try:
            width, height = image.size
            transparent = "transparency" in image.info
            rotation = _may_rotate(image, data)
            # the reduced-scale decode load_array asks for (a square: the same whichever
            # way the EXIF turns the picture)
            draft_jpeg(image, side, resize_mode)
            mode, format, decoded = image.mode, image.format or "", image.size
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageRejected("truncated or corrupt",
                                f"cannot read the header: {error}") from error
    per_pixel = _BYTES_PER_PIXEL.get(mode, _UNKNOWN_BYTES_PER_PIXEL)
    if transparent:
        per_pixel = _TRANSPARENT_BYTES_PER_PIXEL.get(mode, per_pixel)
    if rotation:
        per_pixel += _ROTATION_BYTES_PER_PIXEL
    if format == "WEBP":
        per_pixel += _WEBP_EXTRA_BYTES_PER_PIXEL
    cost = (decoded[0] * decoded[1] * per_pixel + DECODE_ALLOWANCE_BYTES
            + text * _TEXT_BYTES_PER_BYTE)
    return DecodeEstimate(width, height, decoded, mode, format, cost)


def _may_rotate(image: Image.Image, data: bytes) -> bool:
    """Whether EXIF (or XMP) orientation will turn the image once it is decoded."""
    if image.format == "PNG":  # Pillow reads a PNG's EXIF after the pixels when it follows them
        return _png_may_rotate(data)
    try:
        return image.getexif().get(_ORIENTATION) not in (None, 1)
    except Exception:  # a broken EXIF block: decoding rejects it; assume the worst meanwhile
        return True


def _png_may_rotate(data: bytes) -> bool:
    """Whether a PNG has an eXIf chunk with an orientation other than 1, or a text chunk that
    may carry one (XMP, a raw EXIF profile), anywhere in the file. Reads chunk headers only."""
    offset = 8  # after the signature
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"eXIf":
            exif = Image.Exif()
            try:
                exif.load(b"Exif\x00\x00" + data[offset + 8:offset + 8 + length])
            except Exception:  # broken: decoding rejects it
                return True
            if exif.get(_ORIENTATION) not in (None, 1):
                return True
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword = data[offset + 8:offset + 8 + min(length, 80)].split(b"\0", 1)[0]
            if keyword in (b"XML:com.adobe.xmp", b"Raw profile type exif"):
                return True
        elif kind == b"IEND":
            break
        offset += 12 + length  # length, type, data, CRC
    return False


def _png_text_bytes(data: bytes, limit: int) -> int:
    """The bytes a PNG's compressed text chunks (zTXt, compressed iTXt) inflate to, counted in
    small pieces, up to a little over ``limit``. Reads chunk headers and inflates nothing whole."""
    total, offset = 0, 8  # after the signature
    while offset + 8 <= len(data) and total <= limit:
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        compressed = b""
        if kind == b"zTXt":  # keyword, 0, method, data
            compressed = body.partition(b"\0")[2][1:]
        elif kind == b"iTXt":  # keyword, 0, flag, method, language, 0, keyword, 0, text
            rest = body.partition(b"\0")[2]
            parts = rest[2:].split(b"\0", 2)
            if rest[:1] not in (b"", b"\0") and len(parts) == 3:
                compressed = parts[2]
        elif kind == b"IEND":
            break
        if compressed:
            total += _inflated_size(compressed, limit - total)
        offset += 12 + length  # length, type, data, CRC
    return total


def _inflated_size(compressed: bytes, limit: int) -> int:
    """The bytes zlib data inflates to, counted 64 KiB at a time, stopping past ``limit``; what
    inflated before an error (Pillow rejects such a chunk itself)."""
    inflater, total, pending = zlib.decompressobj(), 0, compressed
    while total <= limit:
        try:
            piece = inflater.decompress(pending, 65536)
        except zlib.error:
            break
        total += len(piece)
        pending = inflater.unconsumed_tail
        if not pending and len(piece) < 65536:  # all input used, no output held back
            break
    return total


def max_pixels_for(decode_budget_bytes: int) -> int:
    """The largest image (in pixels) whose cheapest decode fits in the budget, at most
    ``workbench.data.images.DEFAULT_MAX_PIXELS``: the service's default pixel limit.

    Raises:
        ValueError: a budget too small for even a tiny image.
    """
    check_int("decode_budget_bytes", decode_budget_bytes, minimum=2 * DECODE_ALLOWANCE_BYTES)
    return min(DEFAULT_MAX_PIXELS,
               (decode_budget_bytes - DECODE_ALLOWANCE_BYTES) // _CHEAPEST_BYTES_PER_PIXEL)


class DecodeBudget:
    """Bytes of decoding memory shared by the requests of one event loop, granted in arrival
    order (a large request is not overtaken forever by small ones).

    Args:
        total: the budget in bytes.
    """

    def __init__(self, total: int):
        self.total = check_int("total", total, minimum=1)
        self.in_use = 0
        self._waiting: collections.deque = collections.deque()  # [cost, future], oldest first

    @property
    def waiting(self) -> int:
        """Requests waiting for memory."""
        return len(self._waiting)

    async def acquire(self, cost: int, timeout: float) -> bool:
        """Waits until ``cost`` bytes are free, at most ``timeout`` seconds.

        Returns:
            True when granted (call :meth:`release` with the same cost), False on timeout.

        Raises:
            ValueError: ``cost`` is more than the whole budget.
        """
        check_int("cost", cost, minimum=0)
        if cost > self.total:
            raise ValueError(f"cost must be at most the budget of {self.total} bytes, "
                             f"received: {cost}")
        if not self._waiting and self.in_use + cost <= self.total:
            self.in_use += cost
            return True
        entry = [cost, asyncio.get_running_loop().create_future()]
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(entry[1], timeout)
        except asyncio.TimeoutError:
            self._drop(entry)
            return False
        except BaseException:  # cancelled: give back what was granted in the meantime
            if entry[1].done() and not entry[1].cancelled():
                self.release(cost)
            else:
                self._drop(entry)
            raise
        return True

    def release(self, cost: int) -> None:
        """Returns ``cost`` bytes and lets the waiting requests that now fit start."""
        self.in_use -= cost
        self._grant()

    def _drop(self, entry: list) -> None:
        if entry in self._waiting:
            self._waiting.remove(entry)
        self._grant()  # the head may have been this one, holding back smaller ones

    def _grant(self) -> None:
        while self._waiting:
            cost, future = self._waiting[0]
            if future.done():  # timed out or cancelled, not yet dropped
                self._waiting.popleft()
                continue
            if self.in_use + cost > self.total:
                return
            self._waiting.popleft()
            self.in_use += cost
            future.set_result(True)


def connection_limit(requested: int) -> int:
    """``requested``, lowered where needed to fit under the process's open-file limit
    (``ulimit -n``) with room for the files already open.

    Raises:
        ValueError: ``requested`` < 2, or an open-file limit that leaves no room at all.
    """
    check_int("max_connections", requested, minimum=2)
    try:
        import resource
    except ImportError:  # not on a Unix
        return requested
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    in_use = _open_files()
    room = soft - in_use - _RESERVED_FILES
    if room < 2:
        raise UsageError(f"max_connections cannot fit: the open-file limit is {soft} with "
                         f"{in_use} files open; raise it (ulimit -n), received: {requested}")
    return min(requested, room)


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume a few dozen
        return 64


def guarded_protocol(*, max_connections: int, header_timeout: float):
    """uvicorn's HTTP protocol class that closes connections over ``max_connections`` at once
    and those that send no complete request headers within ``header_timeout`` seconds.

    Pass it as ``uvicorn.Config(http=...)``. It refuses new connections only while the limit is
    reached, logging one line when that starts and one when it ends.
    """
    check_int("max_connections", max_connections, minimum=1)
    refused = [0]  # connections closed since the limit was reached

    class GuardedProtocol(http_protocol_class()):
        _headers_due = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                if not refused[0]:
                    logger.warning("connection limit (%d) reached: closing new connections "
                                   "until some finish", max_connections)
                refused[0] += 1
                transport.close()
                return
            self._headers_due = self.loop.call_later(header_timeout, self._headers_overdue)

        def _headers_overdue(self):
            if self.cycle is None and not self.transport.is_closing():
                client = self.client[0] if self.client else "-"
                logger.info("%s closed: no request headers within %g s", client,
                            header_timeout)
                self.transport.close()

        def connection_lost(self, exc):
            if self._headers_due is not None:
                self._headers_due.cancel()
            super().connection_lost(exc)
            if refused[0] and len(self.connections) < max_connections:
                logger.info("accepting connections again (closed %d over the limit)",
                            refused[0])
                refused[0] = 0

        def shutdown(self):
            cycle = self.cycle  # an upload still arriving is cut off: the app logs one line
            if cycle is not None and cycle.more_body and not cycle.response_started:
                self.transport.close()
            super().shutdown()

    return GuardedProtocol
