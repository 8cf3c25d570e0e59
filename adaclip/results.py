"""The output folder of ``adaclip predict``: ``results.json``, anomaly maps and overlays.

Each result is written as soon as its batch is scored and then dropped, so memory does not grow
with the number of images; ``results.json`` is written at the end, and also when the run is
interrupted (then with ``"complete": false``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from adaclip.detector import Failure, Prediction
from adaclip.errors import AdaCLIPError
from adaclip.files import write_atomically

logger = logging.getLogger(__name__)

MAX_STEM_CHARS = 80
"""Longer file stems are cut in output names, which stay well under file-system limits."""


class ResultFolder:
    """Writes one run's maps, overlays and ``results.json`` under ``root``."""

    def __init__(self, root: Path, raw_maps: bool, settings: dict) -> None:
        self.root = root
        self.raw_maps = raw_maps
        self.settings = settings
        self.rows: list[dict] = []

    def check(self) -> None:
        """Makes sure the folder can be written, before any weights are loaded.

        Raises:
            AdaCLIPError: The folder cannot be created or written; the message says why.
        """
        try:
            for sub in ("maps", "overlays"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if (self.root / "results.json").is_dir():
                raise IsADirectoryError(21, "results.json in it is a folder")
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as err:
            raise AdaCLIPError(
                f"cannot write to the output folder {self.root}: {err.strerror or err}; choose "
                "another one with --output."
            ) from err

    def clear_previous(self) -> None:
        """Removes the maps and overlays listed by an earlier run's ``results.json``, and it.

        Only files that ``results.json`` names inside ``maps/`` and ``overlays/`` go, so no
        stale map survives next to the new results and nothing else in the folder is touched.
        """
        previous = self.root / "results.json"
        if not previous.is_file():
            return
        try:
            rows = json.loads(previous.read_text()).get("results", [])
        except (OSError, ValueError, AttributeError):
            logger.warning("ignoring the unreadable %s of an earlier run", previous)
            rows = []
        ours = {(self.root / sub).resolve() for sub in ("maps", "overlays")}
        for row in rows if isinstance(rows, list) else []:
            for key in ("map", "overlay"):
                name = row.get(key) if isinstance(row, dict) else None
                target = (self.root / name).resolve() if isinstance(name, str) else None
                if target is not None and target.parent in ours:
                    target.unlink(missing_ok=True)
        previous.unlink()

    def add(self, index: int, path: Path, class_name: str, result: Prediction | Failure) -> dict:
        """Writes one item's map and overlay and keeps its ``results.json`` row.

        Raises:
            AdaCLIPError: A file could not be written (disk full, permissions).
        """
        if isinstance(result, Failure):
            row = {"image": str(path), "class_name": class_name, "error": result.message}
        else:
            stem = f"{index:04d}_{path.stem[:MAX_STEM_CHARS]}"
            map_path, overlay_path = Path("maps") / f"{stem}.npy", Path("overlays") / f"{stem}.png"
            anomaly_map = result.raw_map if self.raw_maps else result.anomaly_map
            self._write(map_path, f"the map of {path}", lambda p: np.save(p, anomaly_map))
            overlay = result.overlay()
            self._write(
                overlay_path, f"the overlay of {path}", lambda p: Image.fromarray(overlay).save(p)
            )
            row = {
                "image": str(path),
                "class_name": result.class_name,
                "score": result.score,
                "map": str(map_path),
                "overlay": str(overlay_path),
            }
        self.rows.append(row)
        return row

    def finish(self, total: int) -> dict:
        """Writes ``results.json`` with the rows so far; ``complete`` says if all ``total`` are in.

        Returns:
            What was written.
        """
        summary = {
            "results": self.rows,
            **self.settings,
            "raw_maps": self.raw_maps,
            "failed": sum(1 for row in self.rows if "error" in row),
            "complete": len(self.rows) == total,
        }
        target = self.root / "results.json"
        text = json.dumps(summary, indent=2)
        self._write(Path(target.name), "the results", lambda p: p.write_text(text))
        if not summary["complete"]:
            logger.warning("wrote %d of %d results to %s", len(self.rows), total, target)
        return summary

    def _write(self, relative: Path, what: str, write) -> None:
        target = self.root / relative
        try:
            write_atomically(target, write)
        except OSError as err:
            raise AdaCLIPError(
                f"cannot write {what} to {target}: {err.strerror or err}; check free space "
                "and permissions, or choose another --output."
            ) from err
