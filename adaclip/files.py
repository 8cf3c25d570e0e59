"""Writing result files so that a reader never sees half of one."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Lets ``write`` fill a temporary sibling of ``path``, then renames it over ``path``.

    Readers never see a half-written file. The file gets the mode a plain ``open()`` gives
    (``0o666`` less the umask), also when ``write`` goes through a library that creates
    owner-only temporary files.

    Args:
        path: The file to (re)place.
        write: Writes the content to the path it is given; its suffix equals ``path``'s.

    Returns:
        ``path``.
    """
    unique = f"{os.getpid()}-{threading.get_ident()}"  # writers in other threads or processes
    temporary = path.with_name(f".{path.stem}.{unique}.partial{path.suffix}")
    try:
        with temporary.open("wb"):
            pass  # created with the usual mode
        mode = temporary.stat().st_mode
        write(temporary)
        temporary.chmod(mode)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
