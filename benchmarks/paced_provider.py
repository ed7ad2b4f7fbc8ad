"""A paced mock of the OpenAI chat-completions streaming wire, for concurrency benchmarks.

    python -m benchmarks.paced_provider --port 0 [--ttft-ms 200] [--chunks 40] [--gap-ms 20]

Raw asyncio protocol (uvloop when installed), so that thousands of paced streams cost the
mock little and the client under test is what saturates: every stream gets its headers
at once, its first chunk after `--ttft-ms`, then one chunk every `--gap-ms`, a final chunk
with `finish_reason` and `usage`, and `data: [DONE]`, chunked-encoded on a keep-alive
connection. Pacing is one `call_later` per chunk, no task per stream. Prints
`READY <port>` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys

import orjson

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


def _frame(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _chunk(data: dict[str, object]) -> bytes:
    return _frame(b"data: " + orjson.dumps(data) + b"\n\n")


def build_frames(chunks: int) -> list[bytes]:
    """The body of one stream, one chunked-encoding frame per SSE event."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
            "model": "bench-model"}
    frames = [
        _chunk({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                     "finish_reason": None}]})
        for i in range(chunks)
    ]
    # The finish chunk rides with the last token so that the paced gaps stay exact.
    frames[-1] += _chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 12, "completion_tokens": chunks,
                                    "total_tokens": 12 + chunks}})
    frames[-1] += _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    return frames


class PacedStream(asyncio.Protocol):
    def __init__(self, frames: list[bytes], ttft_s: float, gap_s: float) -> None:
        self.frames = frames
        self.ttft_s = ttft_s
        self.gap_s = gap_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP server: a Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        head = self.buffer[:end].lower()
        match = _LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length:]
        if not head.startswith(b"post") or b"/chat/completions" not in head.split(b"\r\n", 1)[0]:
            self.transport.write(NOT_FOUND)
            self._next_request()
            return
        self.busy = True
        self.transport.write(HEAD)
        asyncio.get_running_loop().call_later(self.ttft_s, self._send, 0)

    def _send(self, index: int) -> None:
        if self.transport is None:
            return
        self.transport.write(self.frames[index])
        if index + 1 < len(self.frames):
            asyncio.get_running_loop().call_later(self.gap_s, self._send, index + 1)
        else:
            self.busy = False
            self._next_request()


async def serve(port: int, ttft_ms: float, chunks: int, gap_ms: float) -> None:
    frames = build_frames(chunks)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await loop.create_server(
        lambda: PacedStream(frames, ttft_ms / 1000, gap_ms / 1000), sock=sock, backlog=4096)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=200)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=20)
    args = parser.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with the server extra
        runner = asyncio.run
    try:
        runner(serve(args.port, args.ttft_ms, args.chunks, args.gap_ms))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
