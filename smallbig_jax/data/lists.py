"""List files of videos: parsing with file:line errors, and the project's DataError.

Two list formats are read, both one video per line:

* frame folders (official SmallBigNet / mmaction2 rawframes): ``<name> <num_frames> <label>``;
* video files: ``<path> <label>`` or ``<path> <num_frames> <label>`` (space separated), or a CSV file
  (``.csv``) whose header names the columns ``path`` and ``label`` (and optionally ``num_frames``).

Blank lines and lines starting with ``#`` are skipped. A malformed line raises :class:`DataError`
naming the file and the line number, instead of being dropped silently as the official code does.
Every reader knows the number of classes: a label outside ``[0, num_classes)`` is such an error too (it
would otherwise give an all-zero target, never scored correct). A list file has one format: a video list's
column count is decided by its first line, and a line with another count is an error, never reinterpreted
(``clip.mp4 16`` after ``<path> <num_frames> <label>`` lines lost its label; it is not read as label 16).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import os

from smallbig_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class VideoEntry:
    """One line of a list file. ``num_frames`` is -1 when the list does not give it."""

    path: str
    label: int
    num_frames: int
    source: str  # "<list file>:<line number>", for error messages.


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not an integer") from None


def check_label(label: int, num_classes: int, where: str) -> int:
    """``label`` if it is in ``[0, num_classes)``, else :class:`DataError` naming ``where`` and the range."""
    if not 0 <= label < num_classes:
        raise DataError(f"{where}: label {label} is outside the valid range [0, {num_classes}) ({num_classes} classes)")
    return label


def _label(text: str, num_classes: int, where: str) -> int:
    return check_label(_int(text, "label", where), num_classes, where)


def kinetics_folder_name(name: str) -> str:
    """Folder name of a Kinetics video: the first 11 characters (YouTube ID) of the basename."""
    return os.path.splitext(os.path.basename(name))[0][:11]


def read_text(list_file: str) -> str:
    """A list file's text: UTF-8, a leading byte-order mark (written by some Windows editors) dropped; other bytes
    (a Latin-1 list, say) are a :class:`DataError` naming the line and the fix, not a traceback."""
    with open(list_file, "rb") as f:
        data = f.read()
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{list_file}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); save the list as UTF-8 "
            "(from Latin-1: iconv -f latin1 -t utf-8)"
        ) from None


def _lines(list_file: str):
    """(``file:line``, fields, raw line) of each non-empty, non-comment line of a list file."""
    for n, line in enumerate(io.StringIO(read_text(list_file)), start=1):  # \n, \r\n or \r ends a line
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            yield f"{list_file}:{n}", parts, line


def _not_empty(entries: list[VideoEntry], list_file: str) -> list[VideoEntry]:
    if not entries:
        raise DataError(f"{list_file}: lists no video (empty, or only blank and # lines)")
    return entries


def duplicates(entries: list[VideoEntry]) -> dict[str, list[str]]:
    """Paths listed more than once -> the ``file:line`` of each of their lines (in evaluation such a video would
    count once per line)."""
    lines: dict[str, list[str]] = {}
    for e in entries:
        lines.setdefault(e.path, []).append(e.source)
    return {path: where for path, where in lines.items() if len(where) > 1}


def describe_duplicates(found: dict[str, list[str]], n: int = 3) -> str:
    """`2 videos listed more than once: a.mp4 (list:1, list:7), ...`: a line that stays short."""
    shown = "; ".join(f"{path} ({', '.join(where)})" for path, where in list(found.items())[:n])
    more = f"; and {len(found) - n} more" if len(found) > n else ""
    return f"{len(found)} video{'s' if len(found) > 1 else ''} listed more than once: {shown}{more}"


def read_frame_list(list_file: str, num_classes: int) -> list[VideoEntry]:
    """Parses a frame-folder list (``<name> <num_frames> <label>`` per line, labels in ``[0, num_classes)``)."""
    entries = []
    for where, parts, line in _lines(list_file):
        if len(parts) != 3:
            raise DataError(f"{where}: expected '<name> <num_frames> <label>', got {line.strip()!r}")
        num_frames = _int(parts[1], "num_frames", where)
        if num_frames <= 0:
            raise DataError(f"{where}: num_frames must be positive, got {num_frames}")
        entries.append(VideoEntry(parts[0], _label(parts[2], num_classes, where), num_frames, where))
    return _not_empty(entries, list_file)


_VIDEO_FORMATS = {2: "<path> <label>", 3: "<path> <num_frames> <label>"}


def read_video_list(list_file: str, num_classes: int) -> list[VideoEntry]:
    """Parses a video list: ``<path> <label>`` or ``<path> <num_frames> <label>`` lines (whichever the first
    line has, for the whole file), or a CSV with a header. Labels must be in ``[0, num_classes)``."""
    if list_file.endswith(".csv"):
        return _read_video_csv(list_file, num_classes)
    entries, columns, first = [], None, ""
    for where, parts, line in _lines(list_file):
        if columns is None:
            if len(parts) not in _VIDEO_FORMATS:
                raise DataError(
                    f"{where}: expected '<path> <label>' or '<path> <num_frames> <label>', got {line.strip()!r}"
                )
            columns, first = len(parts), where
        elif len(parts) != columns:
            raise DataError(
                f"{where}: expected '{_VIDEO_FORMATS[columns]}' ({columns} columns, as on the first line {first}), "
                f"got {line.strip()!r}"
            )
        num_frames = _int(parts[1], "num_frames", where) if columns == 3 else -1
        entries.append(VideoEntry(parts[0], _label(parts[-1], num_classes, where), num_frames, where))
    return _not_empty(entries, list_file)


def _read_video_csv(list_file: str, num_classes: int) -> list[VideoEntry]:
    entries = []
    with io.StringIO(read_text(list_file), newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "path" not in fields or "label" not in fields:
            raise DataError(f"{list_file}:1: CSV header must name 'path' and 'label', got {fields}")
        for row in reader:
            where = f"{list_file}:{reader.line_num}"
            if None in row or None in row.values():
                raise DataError(f"{where}: expected the header's {len(fields)} columns {fields}, got {row}")
            if row.get("path") in (None, "") or row.get("label") in (None, ""):
                raise DataError(f"{where}: missing 'path' or 'label' in {row}")
            frames = _int(row.get("num_frames") or "-1", "num_frames", where)
            entries.append(VideoEntry(row["path"], _label(row["label"], num_classes, where), frames, where))
    return _not_empty(entries, list_file)


def write_frame_list(list_file: str, rows: list[tuple[str, int, int]]) -> None:
    """Writes ``<name> <num_frames> <label>`` lines."""
    with open(list_file, "w") as f:
        f.writelines(f"{name} {num} {label}\n" for name, num, label in rows)


def write_video_list(list_file: str, rows: list[tuple[str, int]]) -> None:
    """Writes ``<path> <label>`` lines."""
    with open(list_file, "w") as f:
        f.writelines(f"{path} {label}\n" for path, label in rows)
