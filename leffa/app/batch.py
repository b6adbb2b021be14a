"""Batch runs for the command line: which input pairs to process, and a log line per processed pair.

Inputs are either two paths (each a file or a folder of images) or a pairs file whose lines read
``first second [extra ...]`` (paths relative to a root folder, separated by spaces or tabs; quote a path
holding spaces or ``#`` with ``"..."`` or ``'...'``; ``-`` leaves an extra out; ``#`` starts a comment).
With folders, a folder × a file pairs every image with the file; two folders pair images of the same name.
Extras (mask, DensePose) are files used for every pair, or folders holding one image per first input,
named like it. Every job of a batch gets its own output name, so no result replaces another.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from leffa.common import IMAGE_SUFFIXES

LOG_NAME = "log.jsonl"


class BatchInputError(ValueError):
    """The inputs of a batch run are inconsistent (wrong folder pairing, malformed pairs file)."""


@dataclass(frozen=True)
class Job:
    """One pair to process: first (person) and second (garment or target pose) plus optional extras.

    ``name`` is the output name, unique within the batch (see :func:`unique_names`).
    """

    first: Path
    second: Path
    extras: dict[str, Path] = field(default_factory=dict)
    name: str = ""


def unique_names(pairs: Sequence[tuple[Path, Path, dict[str, Path]]]) -> list[Job]:
    """Jobs named ``<first stem>__<second stem>``; a name already taken in the batch (``a/p.png`` and
    ``b/p.png``, ``p.png`` and ``p.jpg``, a pair listed twice) gets ``-2``, ``-3``, ... appended."""
    taken: set[str] = set()
    jobs = []
    for first, second, extras in pairs:
        stem = f"{first.stem}__{second.stem}"
        name, count = stem, 1
        while name in taken:
            count += 1
            name = f"{stem}-{count}"
        taken.add(name)
        jobs.append(Job(first, second, extras, name))
    return jobs


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _pair_paths(first: Path, second: Path) -> list[tuple[Path, Path]]:
    if first.is_dir() and second.is_dir():
        seconds = {p.stem: p for p in images_in(second)}
        pairs = [(p, seconds[p.stem]) for p in images_in(first) if p.stem in seconds]
        if not pairs:
            raise BatchInputError(f"no images with the same name in {first} and {second}; name pairs alike")
        return pairs
    firsts = images_in(first) if first.is_dir() else [first]
    seconds = images_in(second) if second.is_dir() else [second]
    if not firsts or not seconds:
        raise BatchInputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {first if not firsts else second}")
    return [(a, b) for a in firsts for b in seconds]


def _extra_for(extra: Path, first: Path, name: str) -> Path:
    if not extra.is_dir():
        return extra
    for candidate in images_in(extra):
        if candidate.stem == first.stem:
            return candidate
    raise BatchInputError(f"no {name} for {first.name} in {extra}: expected an image named {first.stem}.*")


def jobs_from_paths(first: Path, second: Path, extras: dict[str, Path | None]) -> list[Job]:
    """Pairs from two paths (files or folders) and extras (files or folders matched by name)."""
    _existing(first, "input")
    _existing(second, "input")
    given = {name: _existing(path, name) for name, path in extras.items() if path is not None}
    return unique_names([
        (a, b, {name: _extra_for(path, a, name) for name, path in given.items()})
        for a, b in _pair_paths(first, second)
    ])


def _fields(line: str, where: str) -> list[str]:
    """Whitespace-separated fields; quotes group a path with spaces; backslashes stay (Windows paths)."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    lexer.escape = ""
    try:
        return list(lexer)
    except ValueError as error:
        raise BatchInputError(f"{where}: {str(error).lower()} in {line.strip()!r}; close the quote") from None


def _read_text(path: Path) -> str:
    """A UTF-8 text file, a byte-order mark at its start ignored (editors on Windows write one)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise BatchInputError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded); save it as UTF-8"
        ) from None
    except IsADirectoryError:
        raise BatchInputError(f"{path} is a folder, not a pairs file") from None


def jobs_from_pairs_file(pairs: Path, extra_names: Sequence[str], root: Path | None = None) -> list[Job]:
    """Pairs from a pairs file: ``first second [extras in the order of extra_names]`` per line."""
    root = root or _existing(pairs, "pairs file").parent
    found = []
    for number, line in enumerate(_read_text(_existing(pairs, "pairs file")).splitlines(), start=1):
        fields = _fields(line, f"{pairs}:{number}")
        if not fields:
            continue
        if not 2 <= len(fields) <= 2 + len(extra_names):
            columns = " ".join(["first", "second", *(f"[{name}]" for name in extra_names)])
            raise BatchInputError(f"{pairs}:{number}: expected '{columns}', got {line.strip()!r}")
        where = f"{pairs}:{number}: file"
        paths = [None if value == "-" else _existing(root / value, where) for value in fields]
        if paths[0] is None or paths[1] is None:
            raise BatchInputError(f"{pairs}:{number}: the first two columns cannot be '-'")
        extras = {name: path for name, path in zip(extra_names, paths[2:]) if path is not None}
        found.append((paths[0], paths[1], extras))
    if not found:
        raise BatchInputError(f"{pairs} lists no pairs; write one 'first second' pair per line")
    return unique_names(found)


@dataclass
class BatchReport:
    """How a batch went: counts, and whether it stopped early (a fatal error, or Ctrl-C)."""

    done: int = 0
    failed: int = 0
    stopped: str | None = None
    interrupted: bool = False


def run_jobs(
    jobs: Sequence[Job],
    work: Callable[[Job], dict[str, Any]],
    out_dir: Path,
    *,
    fatal: tuple[type[BaseException], ...] = (),
    recoverable: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError),
    stdout: TextIO,
    stderr: TextIO,
    logged: dict[str, Any] | None = None,
) -> BatchReport:
    """Run ``work`` per job, appending one JSON line per job to ``out_dir/log.jsonl``.

    A ``recoverable`` error fails that job only; a ``fatal`` one (e.g. missing weights, the same for every
    job) stops the batch, and so does Ctrl-C (logged as ``interrupted``). ``work`` returns what to log
    (output path, seed, ...); ``logged`` goes into every line (e.g. the process's ``rank``). Several
    processes may append to one log: each line is written whole, in one append.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    with (out_dir / LOG_NAME).open("ab", buffering=0) as log:  # unbuffered: one append per line
        for index, job in enumerate(jobs, start=1):
            started = time.perf_counter()
            entry: dict[str, Any] = {"name": job.name, "first": str(job.first), "second": str(job.second)}
            entry.update(logged or {})
            entry.update({name: str(path) for name, path in job.extras.items()})
            try:
                entry.update(work(job))
                entry["status"] = "ok"
                report.done += 1
            except fatal as error:
                entry.update(status="error", error=str(error))
                report.failed += 1
                report.stopped = str(error)
            except recoverable as error:
                entry.update(status="error", error=str(error) or type(error).__name__)
                report.failed += 1
            except KeyboardInterrupt:
                entry.update(status="interrupted", error="interrupted (Ctrl-C)")
                report.interrupted = True
            entry["seconds"] = round(time.perf_counter() - started, 3)
            log.write((json.dumps(entry) + "\n").encode())
            counter = f"[{index}/{len(jobs)}] {job.name}"
            if entry["status"] == "ok":
                more = len(entry.get("outputs", [])) - 1
                extra = f" and {more} more ({', '.join(Path(p).name for p in entry['outputs'][1:])})" if more > 0 else ""
                print(f"{counter}: {entry.get('output', '')}{extra} ({entry['seconds']:.1f} s)", file=stdout)
                for note in entry.get("notes", []):
                    print(f"  note: {note}", file=stdout)
            else:
                print(f"{counter} failed: {entry['error']}", file=stderr)
            if report.stopped is not None or report.interrupted:
                break
    return report
