"""Class groups: the strings a pipeline uses to say which classes a stage scores or a route catches.

| group | classes |
|---|---|
| `all` | every class of the class file |
| `seen` | classes with at least one shot |
| `unseen` | classes without shots (the B round's 29 Stanford-Cars classes) |
| `domain:A[,B...]` | classes whose domain (the `<Prefix>_` of classes.txt) is one of the names (case-insensitive) |
| `ids:a-b[,c...]` | explicit class ids and inclusive ranges |

Terms combine with `&` (intersection), e.g. `seen&domain:Thu-dog`; a leading `!` negates a term (`!domain:Thu-dog`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kshot.errors import ConfigError

_TERM = re.compile(r"^(!?)(all|seen|unseen|domain:.*|ids:.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class ClassInfo:
    """What groups are resolved against.

    Attributes:
        num_classes: C.
        domains: domain per class ('' = unknown), or None when the class file has no domains.
        seen: bool [C], True for classes with at least one shot.
    """

    num_classes: int
    domains: Sequence[str] | None
    seen: np.ndarray


def parse_group(spec: str, where: str = "group") -> list[tuple[bool, str, str]]:
    """Syntax check: [(negated, kind, argument)] for each `&`-joined term. Raises ConfigError naming `where`."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}: a class group must be a non-empty string, got {spec!r}")
    terms = []
    for raw in spec.split("&"):
        term = raw.strip()
        m = _TERM.match(term)
        if not m:
            raise ConfigError(f"{where}: bad class group term {term!r} in {spec!r}; use all, seen, unseen, "
                              "domain:<Name>[,<Name>], ids:<a>-<b>[,<c>] (joined with &, negated with !)")
        kind, _, arg = m.group(2).partition(":")
        kind = kind.lower()
        if kind in ("domain", "ids") and not arg.strip():
            raise ConfigError(f"{where}: empty {kind}: list in class group {spec!r}")
        if kind == "ids":
            _parse_ids(arg, where)
        terms.append((m.group(1) == "!", kind, arg.strip()))
    return terms


def _parse_ids(arg: str, where: str) -> list[int]:
    out: list[int] = []
    for part in arg.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"{where}: bad id range {part!r} (expected N or A-B)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ConfigError(f"{where}: empty id range {part!r}")
        out.extend(range(lo, hi + 1))
    return out


def resolve_group(spec: str, info: ClassInfo, where: str = "group") -> np.ndarray:
    """Class ids (int64, ascending) of a group; ConfigError when a domain or id does not exist or the group is empty."""
    mask = np.ones(info.num_classes, dtype=bool)
    for negated, kind, arg in parse_group(spec, where):
        if kind == "all":
            term = np.ones(info.num_classes, dtype=bool)
        elif kind == "seen":
            term = info.seen.astype(bool).copy()
        elif kind == "unseen":
            term = ~info.seen.astype(bool)
        elif kind == "domain":
            term = _domain_mask(arg, info, where)
        else:
            ids = np.asarray(_parse_ids(arg, where), dtype=np.int64)
            if ids.size and ids.max() >= info.num_classes:
                raise ConfigError(f"{where}: class id {int(ids.max())} in {spec!r} is outside "
                                  f"0..{info.num_classes - 1}")
            term = np.zeros(info.num_classes, dtype=bool)
            term[ids] = True
        mask &= ~term if negated else term
    ids = np.flatnonzero(mask).astype(np.int64)
    if ids.size == 0:
        raise ConfigError(f"{where}: class group {spec!r} is empty for this class list")
    return ids


def _domain_mask(arg: str, info: ClassInfo, where: str) -> np.ndarray:
    if info.domains is None:
        raise ConfigError(f"{where}: 'domain:{arg}' needs class domains, but the class file has no <Domain>_ prefixes")
    doms = np.asarray([d.lower() for d in info.domains], dtype=object)
    known = sorted({d for d in info.domains if d})
    mask = np.zeros(info.num_classes, dtype=bool)
    for name in (n.strip().lower() for n in arg.split(",")):
        hit = doms == name
        if not hit.any():
            raise ConfigError(f"{where}: no class in domain {name!r}; domains here: {known}")
        mask |= hit
    return mask
