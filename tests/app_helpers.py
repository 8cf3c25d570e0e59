"""Shared by the demo's tests: importing app.py, and awkward upload files to throw at it."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_app() -> ModuleType:
    """Imports the repository's ``app.py`` (it lives at the root, outside the package)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("app")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


START_TIMEOUT_S = 120


def wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    """Polls ``url`` until it answers 200; raises with the server's log if it dies or times out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"app.py exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_app(options: Sequence[str], log: Path) -> Iterator[str]:
    """Runs ``python app.py OPTIONS`` on a free port of 127.0.0.1; yields its URL, then stops it."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "app.py"), *options, "--host", "127.0.0.1"]
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, "--port", str(port)], cwd=REPO, env=env, stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_bomb(path: Path, side: int = 30_000) -> Path:
    """A 2 KB PNG whose header claims ``side x side`` greyscale pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 2)  # two rows of filter byte + zeros
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
    path.write_bytes(png + _png_chunk(b"IEND", b""))
    return path


def write_bad_uploads(folder: Path) -> dict[str, Path]:
    """Files that are not usable images, by what is wrong with them."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.png"
    text.write_text("this is a text file with an image suffix\n")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    full = folder / "full.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    truncated = folder / "truncated.png"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return {
        "not an image": text,
        "empty": empty,
        "truncated": truncated,
        "bomb": write_bomb(folder / "bomb.png"),
    }


BAD_UPLOAD_MESSAGES = {
    "not an image": "not an image",
    "empty": "empty",
    "truncated": "could not be decoded|truncated",
    "bomb": "too large|more than the limit",
}
"""A pattern each bad upload's error message must match."""


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Unusual but valid images: RGBA, 16-bit greyscale and a 3 x 2 pixel picture."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rgba = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (48, 40, 4), dtype=np.uint8), "RGBA").save(rgba)
    grey16 = folder / "grey16.png"
    Image.fromarray(rng.integers(0, 65536, (50, 30), dtype=np.uint16)).save(grey16)
    tiny = folder / "tiny.png"
    Image.fromarray(rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)).save(tiny)
    return {"rgba": rgba, "grey16": grey16, "tiny": tiny}
