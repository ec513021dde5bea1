"""Plain list files: `<relpath> <label>` per line (the challenge's train.txt format) and class-name files.

A list file names images relative to a root (default: the list file's folder). A class file is either
`<name> <id>` per line (the challenge's classes.txt) or one name per line (line order = id).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from kshot.data.dataset import Dataset, Item
from kshot.data.paths import OnMissing, atomic_write_text, check_missing, normalize_relpath, read_text_lines
from kshot.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListEntry:
    """One parsed line of a list file: normalised path, integer label (None if the line had none), 1-based line."""

    path: str
    label: int | None
    line: int


def parse_list_file(path: Path | str, *, allow_unlabelled: bool = False) -> list[ListEntry]:
    """Parse `<relpath> <label>` lines.

    The label is the last whitespace-separated token, so paths may contain spaces. Blank lines are skipped;
    backslashes become '/'. Malformed lines, non-integer or negative labels, unsafe paths and repeated paths raise
    `DataError` with the line number.

    Args:
        path: the list file.
        allow_unlabelled: accept lines with a path only (label None).
    """
    path = Path(path)
    src = str(path)
    out: list[ListEntry] = []
    first_line: dict[str, int] = {}
    for n, raw in enumerate(read_text_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{src}:{n}"
        tokens = line.rsplit(maxsplit=1)
        if len(tokens) == 1:
            if not allow_unlabelled:
                raise DataError(f"{where}: expected '<path> <label>', got {line!r}")
            rel, label = normalize_relpath(tokens[0], where), None
        else:
            rel = normalize_relpath(tokens[0], where)
            label = parse_label(tokens[1], where)
        if rel in first_line:
            raise DataError(f"{where}: duplicate path {rel!r} (first listed on line {first_line[rel]})")
        first_line[rel] = n
        out.append(ListEntry(rel, label, n))
    return out


def parse_label(token: str, where: str) -> int:
    """A non-negative integer label (decimal digits only)."""
    if not token.isdigit() or not token.isascii():
        raise DataError(f"{where}: label {token!r} is not a non-negative integer")
    return int(token)


def read_classes_file(path: Path | str) -> list[str]:
    """Class names in id order, from `<name> <id>` lines or from one name per line.

    The `<name> <id>` form is used when every non-blank line ends in an integer token; its ids must be unique and
    contiguous from 0 (in any line order). Names must be unique.

    Returns:
        names as written (e.g. 'Animal_Bear'), index = class id.
    """
    path = Path(path)
    rows = [(n, raw.strip()) for n, raw in enumerate(read_text_lines(path), start=1) if raw.strip()]
    if not rows:
        raise DataError(f"{path}: no class names")
    split = [(n, line.rsplit(maxsplit=1)) for n, line in rows]
    with_ids = all(len(t) == 2 and t[1].lstrip("-").isdigit() for _, t in split)
    if not with_ids:
        names = [line for _, line in rows]
        _check_unique_names(path, names, [n for n, _ in rows])
        return names
    by_id: dict[int, tuple[str, int]] = {}
    for n, (name, tok) in split:
        cid = int(tok)
        if cid < 0:
            raise DataError(f"{path}:{n}: negative class id {cid}")
        if cid in by_id:
            raise DataError(f"{path}:{n}: duplicate class id {cid} (also line {by_id[cid][1]}: {by_id[cid][0]!r})")
        by_id[cid] = (name, n)
    gaps = sorted(set(range(len(by_id))) - set(by_id))
    if gaps:
        raise DataError(f"{path}: class ids must be contiguous 0..{len(by_id) - 1}; missing {gaps[:10]}"
                        f"{' ...' if len(gaps) > 10 else ''} (largest id {max(by_id)})")
    names = [by_id[i][0] for i in range(len(by_id))]
    _check_unique_names(path, names, [by_id[i][1] for i in range(len(by_id))])
    return names


def _check_unique_names(path: Path, names: Sequence[str], lines: Sequence[int]) -> None:
    seen: dict[str, int] = {}
    for name, n in zip(names, lines):
        if name in seen:
            raise DataError(f"{path}:{n}: duplicate class name {name!r} (also line {seen[name]})")
        seen[name] = n


def check_labels(entries: Sequence[ListEntry], num_classes: int, source: Path | str) -> None:
    """Every label must index the class list."""
    for e in entries:
        if e.label is not None and e.label >= num_classes:
            raise DataError(f"{source}:{e.line}: label {e.label} is outside the class list "
                            f"(0..{num_classes - 1}, {num_classes} classes)")


def read_list_file(path: Path | str, *, root: Path | str | None = None, classes_file: Path | str | None = None,
                   on_missing: OnMissing = "error", allow_unlabelled: bool = False) -> Dataset:
    """Read a `<relpath> <label>` list into a `Dataset`.

    Args:
        path: the list file.
        root: directory the paths are relative to (default: the list file's folder).
        classes_file: class names (see `read_classes_file`); without it classes are named '0', '1', ... up to the
            largest label.
        on_missing: 'error' | 'skip' | 'ignore' for listed files that do not exist (see `paths.check_missing`).
        allow_unlabelled: accept path-only lines.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    entries = parse_list_file(path, allow_unlabelled=allow_unlabelled)
    if classes_file is not None:
        raw = read_classes_file(classes_file)
        check_labels(entries, len(raw), path)
        classnames = [clean_name(r) for r in raw]
    else:
        top = max((e.label for e in entries if e.label is not None), default=-1)
        raw = [str(i) for i in range(top + 1)]
        classnames = list(raw)
    keep, skipped = check_missing(root, [e.path for e in entries], [f"{path}:{e.line}" for e in entries],
                                  on_missing, str(path))
    items = [Item(entries[i].path, entries[i].label) for i in keep]
    return Dataset(root=root, items=items, classnames=classnames, name=path.stem, raw_classnames=raw,
                   skipped=skipped)


def clean_name(raw: str) -> str:
    """Underscores to spaces, runs of spaces collapsed ('sea_lion' -> 'sea lion')."""
    return " ".join(raw.replace("_", " ").split())


def format_list(entries: Iterable[tuple[str, int]]) -> str:
    """The text of a list file: one `<relpath> <label>` line each, '/' separators, trailing newline."""
    lines = []
    for rel, label in entries:
        rel = rel.replace("\\", "/")
        if rel != rel.strip() or "\n" in rel or "\r" in rel:
            raise DataError(f"cannot write path {rel!r}: leading/trailing whitespace or newline")
        if int(label) < 0:
            raise DataError(f"cannot write negative label {label} for {rel!r}")
        lines.append(f"{rel} {int(label)}\n")
    return "".join(lines)


def write_list_file(path: Path | str, entries: Iterable[tuple[str, int]]) -> None:
    """Write `<relpath> <label>` lines (atomically). Inverse of `parse_list_file`."""
    atomic_write_text(path, format_list(entries))


def write_dataset_list(path: Path | str, dataset: Dataset) -> None:
    """Write every item of a labelled `dataset` as a `<relpath> <label>` line, in item order."""
    unlabelled = [it.path for it in dataset.items if it.label is None]
    if unlabelled:
        raise DataError(f"cannot write a list file: {len(unlabelled)} items have no label (e.g. {unlabelled[0]!r})")
    write_list_file(path, [(it.path, int(it.label)) for it in dataset.items])  # type: ignore[arg-type]


def write_classes_file(path: Path | str, names: Sequence[str]) -> None:
    """Write `<name> <id>` lines in id order (atomically). Names must be unique and contain no whitespace."""
    seen: set[str] = set()
    for i, n in enumerate(names):
        if not n or any(c.isspace() for c in n):
            raise DataError(f"class {i}: name {n!r} is empty or contains whitespace; use '_' instead of spaces")
        if n in seen:
            raise DataError(f"class {i}: duplicate class name {n!r}")
        seen.add(n)
    atomic_write_text(path, "".join(f"{n} {i}\n" for i, n in enumerate(names)))
