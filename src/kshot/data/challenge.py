"""The 4th Jittor AI Challenge (2024, track 1) layout: reader, class-name cleaning and writers.

Layout (see reference/challenge-and-seeds.md §A)::

    root/train.txt            <relpath> <label> per line; the whole training pool (~181.7k lines)
    root/classes.txt          <Prefix>_<name> <id>; 374 classes (Animal_, Caltech-101_, Food-101_, Thu-dog_)
    root/classes_b.txt        B round: the same 374 + 29 Stanford-Cars_ classes (ids 374-402) with no training images
    root/TrainSet/<Domain>/<Class>/<n>.jpg
    root/TestSetA/, root/TestSetB/   flat folders of unlabelled test images

Class names are cleaned by stripping the domain prefix (found by name, not by fixed character offsets as the
official baseline did) and turning underscores into spaces; the domain goes to `Dataset.class_domains`.
Classes with no training image (the B-round cars) are kept in the class list and simply have no items.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from kshot.data.dataset import Dataset, Item
from kshot.data.listfile import check_labels, parse_list_file, read_classes_file, write_classes_file, write_list_file
from kshot.data.paths import IMAGE_EXTENSIONS, OnMissing, check_missing, check_unique_names, is_image_name, list_images
from kshot.errors import DataError

log = logging.getLogger(__name__)

#: Domain prefixes of the challenge's class files, in id order.
CHALLENGE_DOMAINS: tuple[str, ...] = ("Animal", "Caltech-101", "Food-101", "Thu-dog", "Stanford-Cars")
TRAIN_LIST = "train.txt"
CLASS_FILES = ("classes.txt", "classes_b.txt")
TEST_DIRS = {"testA": "TestSetA", "testB": "TestSetB"}
SPLITS = ("train", "testA", "testB", "test")


def split_domain(raw: str, domains: Sequence[str] = CHALLENGE_DOMAINS) -> tuple[str | None, str]:
    """Split a raw class name into (domain, rest).

    The domain is a `<domain>_` prefix (case-insensitive), optionally after a letter-free lead such as '03_'
    ('03_Thu-dog_Pomeranian'); a domain word inside a name ('Stuffed_Animal_toy') is not a prefix. The earliest match
    wins, and on ties the longest domain.

    Returns:
        (domain as spelled in `domains`, remainder) or (None, raw) when no domain matches.
    """
    low = raw.lower()
    best: tuple[int, int, str] | None = None
    for d in domains:
        key = d.lower() + "_"
        start = 0
        while (p := low.find(key, start)) >= 0:
            if p == 0 or (low[p - 1] in "_- " and not any(ch.isalpha() for ch in low[:p])):
                cand = (p, -len(d), d)
                if best is None or cand < best:
                    best = cand
                break
            start = p + 1
    if best is None:
        return None, raw
    p, _, d = best
    rest = raw[p + len(d) + 1:]
    return (d, rest) if rest.strip("_ ") else (None, raw)


def clean_classname(raw: str, domains: Sequence[str] = CHALLENGE_DOMAINS) -> str:
    """Human-readable class name: domain prefix stripped, underscores to spaces ('Thu-dog_Shiba_Dog' -> 'Shiba Dog')."""
    return " ".join(split_domain(raw, domains)[1].replace("_", " ").split())


def make_raw_classname(name: str, domain: str | None) -> str:
    """Inverse of the cleaning: ('Shiba Dog', 'Thu-dog') -> 'Thu-dog_Shiba_Dog'."""
    body = "_".join(name.split())
    return f"{domain}_{body}" if domain else body


def train_path_domain(relpath: str) -> str | None:
    """'TrainSet/<Domain>/<Class>/<img>' -> '<Domain>', else None."""
    parts = relpath.split("/")
    return parts[1] if len(parts) >= 4 and parts[0].lower() == "trainset" else None


def is_challenge_root(path: Path) -> bool:
    """A directory with train.txt and classes.txt or classes_b.txt."""
    return path.is_dir() and (path / TRAIN_LIST).is_file() and any((path / c).is_file() for c in CLASS_FILES)


def pick_classes_file(root: Path, split: str, classes_file: Path | str | None = None) -> Path:
    """Which class file to read.

    An explicit `classes_file` (as given, else relative to `root`) wins. Otherwise split 'testA' prefers classes.txt
    (the A-round list) and every other split prefers classes_b.txt (its superset with the unseen B-round classes).
    """
    if classes_file is not None:
        p = Path(classes_file)
        for cand in (p, root / p):
            if cand.is_file():
                return cand
        raise DataError(f"classes file not found: {classes_file} (also looked in {root})")
    order = CLASS_FILES if split == "testA" else CLASS_FILES[::-1]
    for name in order:
        if (root / name).is_file():
            return root / name
    what = "no such folder" if not Path(root).is_dir() else f"no {' or '.join(CLASS_FILES)}"
    raise DataError(f"{root}: {what} (not a challenge root; name the class file with --classes / classes_file=)")


def inferred_domains(raw: Sequence[str]) -> list[str]:
    """Domain prefixes a class file uses consistently: every line reads `<Prefix>_<name>` with a capitalised,
    underscore-free prefix, and there are at most a quarter as many prefixes as classes. This recognises domains
    without training folders (the B round's extra classes) beyond the challenge's known ones."""
    prefixes = [r.split("_", 1)[0] if "_" in r else "" for r in raw]
    if not raw or not all(p[:1].isupper() for p in prefixes):
        return []
    distinct = list(dict.fromkeys(prefixes))
    return distinct if len(distinct) <= max(1, len(raw) // 4) else []


def challenge_classes(raw: Sequence[str], extra_domains: Sequence[str] = ()) -> tuple[list[str], list[str | None]]:
    """Clean names and domains of raw class names; `extra_domains` (e.g. TrainSet folders) and prefixes the file uses
    consistently (`inferred_domains`) extend the known ones."""
    domains = list(dict.fromkeys([*CHALLENGE_DOMAINS, *extra_domains, *inferred_domains(raw)]))
    names, doms = [], []
    for r in raw:
        d, _ = split_domain(r, domains)
        names.append(clean_classname(r, domains))
        doms.append(d)
    return names, doms


def _test_folder(root: Path, split: str) -> Path:
    if split in TEST_DIRS:
        return root / TEST_DIRS[split]
    found = [root / n for n in ("TestSetA", "TestSetB", "TestSet") if (root / n).is_dir()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{root}: no TestSetA/, TestSetB/ or TestSet/ folder for split 'test'")
    raise DataError(f"{root}: split 'test' is ambiguous ({', '.join(f.name for f in found)}); use 'testA' or 'testB'")


def read_challenge(root: Path | str, split: str = "train", *, classes_file: Path | str | None = None,
                   image_root: Path | str | None = None, on_missing: OnMissing = "error") -> Dataset:
    """Read the challenge layout.

    Args:
        root: the dataset folder (holding train.txt and the class file).
        split: 'train' (the whole pool of train.txt), 'testA', 'testB', or 'test' (the only test folder present).
        classes_file: override the class file (see `pick_classes_file`).
        image_root: for 'train', the folder train.txt paths are relative to (default `root`); for test splits, the
            test image folder (default `root/TestSetA` etc.).
        on_missing: policy for train.txt lines whose image does not exist ('error' | 'skip' | 'ignore').

    Returns:
        For 'train': root = image root, items 'TrainSet/<Domain>/<Class>/<n>.jpg' with labels and domains.
        For test splits: root = the test folder, items = file names in sorted order, no labels.
        Both carry the full class list (cleaned names, raw names, class_domains).
    """
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"challenge layout: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    cfile = pick_classes_file(root, split, classes_file)
    raw = read_classes_file(cfile)
    log.info("challenge: %d classes from %s", len(raw), cfile)
    if split == "train":
        return _read_train(root, raw, cfile, image_root, on_missing)
    folder = Path(image_root) if image_root is not None else _test_folder(root, split)
    if not folder.is_dir():
        raise DataError(f"test folder not found: {folder}")
    names = list_images(folder)
    if not names:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    check_unique_names(names, str(folder))
    other = [p.name for p in folder.iterdir() if p.is_dir() or not is_image_name(p.name)]
    if other:
        log.warning("%s: ignoring %d entries that are not image files (e.g. %s)", folder, len(other), other[0])
    classnames, doms = challenge_classes(raw)
    return Dataset(root=folder, items=[Item(n) for n in names], classnames=classnames,
                   class_domains=domains_or_none(doms), name="challenge", raw_classnames=list(raw))


def _read_train(root: Path, raw: list[str], cfile: Path, image_root: Path | str | None,
                on_missing: OnMissing) -> Dataset:
    listing = root / TRAIN_LIST
    entries = parse_list_file(listing)
    check_labels(entries, len(raw), listing)
    base = Path(image_root) if image_root is not None else root
    keep, skipped = check_missing(base, [e.path for e in entries], [f"{listing}:{e.line}" for e in entries],
                                  on_missing, str(listing))
    path_doms = [train_path_domain(e.path) for e in entries]
    classnames, doms = challenge_classes(raw, [d for d in dict.fromkeys(path_doms) if d])
    # A class without a prefix takes the TrainSet/<Domain> folder of its images when they all agree.
    seen: dict[int, set[str]] = defaultdict(set)
    for e, d in zip(entries, path_doms):
        if d:
            seen[e.label].add(d)  # type: ignore[index]
    for c, ds in seen.items():
        if doms[c] is None and len(ds) == 1:
            doms[c] = next(iter(ds))
        elif doms[c] is not None and doms[c] not in ds:
            log.warning("%s: class %d (%s) is in domain %s but its images are under %s", cfile, c, raw[c], doms[c],
                        sorted(ds))
    items = [Item(entries[i].path, entries[i].label, path_doms[i]) for i in keep]
    empty = len(raw) - len({it.label for it in items})
    if empty:
        log.info("challenge: %d of %d classes have no training image (zero-shot classes)", empty, len(raw))
    return Dataset(root=base, items=items, classnames=classnames, class_domains=domains_or_none(doms),
                   name="challenge", raw_classnames=list(raw), skipped=skipped)


def domains_or_none(doms: list[str | None]) -> list[str] | None:
    """None when no class has a domain, else one string per class ('' = unknown)."""
    return None if all(d is None for d in doms) else [d or "" for d in doms]


def write_train_txt(path: Path | str, dataset: Dataset) -> None:
    """Write the items of a labelled dataset as train.txt (`<relpath> <label>`, item order, '/' separators)."""
    bad = [it.path for it in dataset.items if it.label is None]
    if bad:
        raise DataError(f"cannot write {path}: {len(bad)} items have no label (e.g. {bad[0]!r})")
    write_list_file(path, [(it.path, int(it.label)) for it in dataset.items])  # type: ignore[arg-type]


def write_classes_txt(path: Path | str, dataset: Dataset) -> None:
    """Write classes.txt (`<Prefix>_<name> <id>`): the raw names when known, else rebuilt from name + domain."""
    if dataset.raw_classnames is not None:
        names = list(dataset.raw_classnames)
    else:
        doms = dataset.class_domains or [None] * dataset.num_classes
        names = [make_raw_classname(n, d) for n, d in zip(dataset.classnames, doms)]
    write_classes_file(path, names)
