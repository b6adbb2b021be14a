"""A JSON-lines tracker for accelerate: the logged scalars in a plain file, no tracking service needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from accelerate.tracking import GeneralTracker

#: Name of the log file under ``<output_dir>/logs/<project>/``.
JSONL_FILE = "log.jsonl"


class JsonLinesTracker(GeneralTracker):
    """Appends ``{"step": n, ...values}`` per logged step to ``path`` (a resumed run continues the file)."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: IO[str] | None = None

    @property
    def tracker(self) -> IO[str] | None:
        return self._file

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl_log(path: str | Path) -> list[dict[str, Any]]:
    """The records a :class:`JsonLinesTracker` wrote, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
