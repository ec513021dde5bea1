"""Prompt layouts: which token of which prompt is a fixed word and which is a learned vector.

A *recipe* is a list of pieces: fixed token ids, `Learned(group, count)` slots, and `CLASS` (the class name's
tokens). `build_layout` turns R recipes x C class names into R*C token sequences `<sot> pieces... <eot> <pad>...`
and, per position, the index of its learned vector in the flat *bank* (the concatenation of all groups, in order),
or -1 for a fixed token. Rows are ordered recipe-major: row = r * C + c.

CoOp (Zhou et al., IJCV'22, `KaiyangZhou/CoOp: trainers/coop.py`): [SOS][v1..vM][CLASS][.][EOS] with the class at the
end, in the middle (v1..v_{M//2} CLASS v_{M//2+1}..vM) or at the front. ATPrompt (Li et al., ICCV'25,
`zhengli97/ATPrompt: trainers/coop_atp.py`): [SOS][a1 x m][ATTR1]...[ai x m][ATTRi][c x n][CLASS][.][EOS], each ATTR
being the fixed tokens of an attribute word; here the class part may also take the middle/front positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from kshot.errors import ConfigError, DataError
from kshot.methods.prompting.tokens import Specials, Tokenizer, content_ids

POSITIONS = ("end", "middle", "front")


@dataclass(frozen=True)
class Learned:
    """`count` learned vectors of `group`, from index `start` within the group.

    Attributes:
        ids: placeholder token ids for these positions (the init words' ids when initialised from words, so the
            prompt is exactly that text before training); empty = the pad id.
    """

    group: str
    count: int
    start: int = 0
    ids: tuple[int, ...] = ()


class _Class:
    def __repr__(self) -> str:
        return "CLASS"


CLASS = _Class()
Piece = Union[tuple[int, ...], Learned, _Class]


@dataclass
class Layout:
    """Token sequences of R recipes x C classes.

    Attributes:
        ids: int64 [R*C, L] token ids (placeholders at learned positions).
        slot: int64 [R*C, L] index into the flat bank, -1 for fixed tokens.
        eot: int64 [R*C] end-of-text position of each row.
        row_class: int64 [R*C] class index of each row.
        num_recipes, num_classes: R and C.
        offsets: start of each group in the flat bank; bank_size = P.
    """

    ids: torch.Tensor
    slot: torch.Tensor
    eot: torch.Tensor
    row_class: torch.Tensor
    num_recipes: int
    num_classes: int
    offsets: dict[str, int]
    bank_size: int


def build_layout(recipes: Sequence[Sequence[Piece]], classnames: Sequence[str], tokenizer: Tokenizer,
                 sp: Specials, group_sizes: dict[str, int], *, context_length: int, trim: bool) -> Layout:
    """Build the token layout (see the module docstring).

    Args:
        recipes: R lists of pieces.
        classnames: C class names (tokenized as they are).
        sp: the tokenizer's special ids.
        group_sizes: vectors per group, in bank order.
        context_length: the text tower's context; longer prompts are an error.
        trim: cut the columns after the last end-of-text token (exact under a causal mask).

    Raises:
        DataError: a class name tokenizes to nothing or makes its prompt longer than the context (names the class).
        ConfigError: a learned slot outside its group.
    """
    if not classnames:
        raise DataError("prompt learning needs at least one class name")
    offsets, total = {}, 0
    for g, n in group_sizes.items():
        offsets[g] = total
        total += n
    names = [content_ids(tokenizer, n, what=f"class name #{c}") for c, n in enumerate(classnames)]
    rows_ids, rows_slot, eots = [], [], []
    for recipe in recipes:
        for c, name_ids in enumerate(names):
            ids, slot = [sp.sot], [-1]
            for piece in recipe:
                if piece is CLASS:
                    ids += name_ids
                    slot += [-1] * len(name_ids)
                elif isinstance(piece, Learned):
                    if piece.group not in offsets or piece.start + piece.count > group_sizes[piece.group]:
                        raise ConfigError(f"learned slot {piece} is outside its group ({group_sizes})")
                    ph = list(piece.ids) if piece.ids else [sp.pad] * piece.count
                    ids += ph
                    slot += [offsets[piece.group] + piece.start + i for i in range(piece.count)]
                else:
                    ids += list(piece)
                    slot += [-1] * len(piece)
            if len(ids) + 1 > context_length:
                raise DataError(f"class {classnames[c]!r} (#{c}): its prompt needs {len(ids) + 1} tokens but the text "
                                f"encoder's context is {context_length}; shorten the name or use fewer context tokens")
            eots.append(len(ids))
            rows_ids.append(ids + [sp.eot])
            rows_slot.append(slot + [-1])
    length = max(eots) + 1 if trim else context_length
    n = len(rows_ids)
    ids_t = torch.full((n, length), sp.pad, dtype=torch.long)
    slot_t = torch.full((n, length), -1, dtype=torch.long)
    for i, (ids, slot) in enumerate(zip(rows_ids, rows_slot)):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        slot_t[i, : len(slot)] = torch.tensor(slot)
    return Layout(ids=ids_t, slot=slot_t, eot=torch.tensor(eots), row_class=torch.arange(n) % len(classnames),
                  num_recipes=len(recipes), num_classes=len(classnames), offsets=offsets, bank_size=total)


def coop_pieces(n_ctx: int, position: str, suffix: tuple[int, ...], group: str = "ctx",
                init_ids: Sequence[int] = ()) -> list[Piece]:
    """CoOp's context block: M learned vectors around the class name, then `suffix` (the '.' token).

    Args:
        n_ctx: M (0 = the bare "CLASS." prompt).
        position: 'end' | 'middle' | 'front'.
        init_ids: M placeholder ids (the init words), or empty.
    """
    if position not in POSITIONS:
        raise ConfigError(f"class_token_position must be one of {POSITIONS}, got {position!r}")
    ids = tuple(init_ids)
    if ids and len(ids) != n_ctx:
        raise ConfigError(f"{len(ids)} init token ids for {n_ctx} context vectors")
    if position == "end":
        return [Learned(group, n_ctx, 0, ids), CLASS, suffix]
    if position == "front":
        return [CLASS, Learned(group, n_ctx, 0, ids), suffix]
    half = n_ctx // 2
    return [Learned(group, half, 0, ids[:half]), CLASS, Learned(group, n_ctx - half, half, ids[half:]), suffix]


def attribute_pieces(attribute_ids: Sequence[Sequence[int]], n_att: int, groups: Sequence[str]) -> list[Piece]:
    """ATPrompt's attribute block: for each attribute i, `n_att` learned vectors of `groups[i]`, then its words."""
    out: list[Piece] = []
    for ids, g in zip(attribute_ids, groups, strict=True):
        out += [Learned(g, n_att), tuple(ids)]
    return out
