"""Tiny shard sets for the data tests: dense shards from our writer, img2dataset-style shards
with gappy keys, and raw tars for corrupt members. Images are 16 px JPEGs whose colour
encodes the sample id, so a test can tell samples apart after decoding. :func:`serve_folder`
serves a folder over loopback HTTP, optionally cutting a response off part-way."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from PIL import Image

from clipdro.data.manifest import Manifest
from clipdro.data.writer import ShardSample, write_shards


def image_bytes(index: int, size: int = 16, fmt: str = "JPEG") -> bytes:
    colour = (index * 37 % 256, index * 91 % 256, index * 13 % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def dense_samples(count: int, size: int = 16) -> list[ShardSample]:
    return [ShardSample(image=image_bytes(i, size), image_ext="jpg", caption=f"picture number {i}",
                        metadata={"index": i}) for i in range(count)]


def write_dense(folder: Path, count: int, per_shard: int, size: int = 16) -> Manifest:
    return write_shards(dense_samples(count, size), folder, samples_per_shard=per_shard)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, index: int, caption: bytes | None = None) -> list[tuple[str, bytes]]:
    """Members of one well-formed img2dataset sample (no sample_id in the json)."""
    text = caption if caption is not None else f"picture number {index}".encode()
    return [(f"{key}.jpg", image_bytes(index)), (f"{key}.txt", text),
            (f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())]


def write_img2dataset(folder: Path, rows_per_shard: list[list[int]], rows_digits: int = 4,
                      stats: bool = True) -> list[int]:
    """Shards ``{shard:05d}.tar`` holding the given rows (gaps = failed downloads); returns the keys."""
    keys = []
    for shard, rows in enumerate(rows_per_shard):
        members = []
        for row in rows:
            key = shard * 10**rows_digits + row
            keys.append(key)
            members += sample_members(f"{key:0{5 + rows_digits}d}", key)
        write_tar(folder / f"{shard:05d}.tar", members)
        if stats:
            (folder / f"{shard:05d}_stats.json").write_text(
                json.dumps({"count": 10**rows_digits, "successes": len(rows)}))
    return keys


@dataclass
class ServedFolder:
    """A running loopback server of :func:`serve_folder`."""

    url: str  # http://127.0.0.1:PORT
    requests: Counter = field(default_factory=Counter)  # file name -> GET requests received
    cut: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (bytes sent, of how many requests)
    die_after_cut: bool = False  # the server stops after the first cut response
    stop: threading.Event = field(default_factory=threading.Event)


def _handler(folder: Path, served: ServedFolder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- http.server's name
            name = self.path.lstrip("/")
            served.requests[name] += 1
            path = folder / name
            if "/" in name or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            keep, cut_requests = served.cut.get(name, (len(data), 0))
            if served.requests[name] > cut_requests:
                keep = len(data)
            self.wfile.write(data[:keep])  # fewer bytes than announced: the client sees a broken transfer
            if keep < len(data) and served.die_after_cut:
                served.stop.set()

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def serve_folder(folder: Path, cut: dict[str, tuple[int, int]] | None = None, die_after_cut: bool = False,
                 max_requests: int = 500, lifetime_s: float = 120.0) -> Iterator[ServedFolder]:
    """Serve the files of ``folder`` at http://127.0.0.1:PORT/NAME (a free port) while the block runs.

    ``cut[name] = (n, k)``: the first k responses for ``name`` announce the whole file but send only n
    bytes, then close. ``die_after_cut``: the server stops after the first such response (later
    requests are refused). The server also stops by itself after ``max_requests`` requests or
    ``lifetime_s`` seconds, and always at the end of the block.
    """
    served = ServedFolder(url="", cut=dict(cut or {}), die_after_cut=die_after_cut)
    server = HTTPServer(("127.0.0.1", 0), _handler(folder, served))
    server.timeout = 0.05
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    deadline = time.monotonic() + lifetime_s

    def loop():
        while not served.stop.is_set() and sum(served.requests.values()) < max_requests \
                and time.monotonic() < deadline:
            server.handle_request()  # returns after server.timeout when idle
        server.server_close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.stop.set()
        thread.join(timeout=5)
