"""Tokenizer helpers for prompt learning: special token ids, word ids without specials, readable token strings.

Works with any kshot backbone tokenizer that maps `list[str]` to an int64 tensor `[N, context_length]` of the form
`<start> tokens <end> <pad>...` (open_clip's BPE `SimpleTokenizer`, the toy world's word+character tokenizer). The
special ids are read from the tokenization of the empty string, so no id value (such as "end-of-text is the highest
id") is assumed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from kshot.errors import ConfigError, DataError

Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class Specials:
    """Special token ids and the padded length of a tokenizer.

    Attributes:
        sot: start-of-text id.
        eot: end-of-text id (the text tower pools its feature at this position).
        pad: padding id.
        context_length: length of every tokenized row.
    """

    sot: int
    eot: int
    pad: int
    context_length: int


def specials(tokenizer: Tokenizer) -> Specials:
    """Special ids, read from `tokenizer([""])` = [sot, eot, pad, ...]."""
    row = tokenizer([""])
    if row.ndim != 2 or row.shape[1] < 3:
        raise ConfigError(f"prompt learning needs a tokenizer returning [N, L>=3] ids; got shape {tuple(row.shape)}")
    row = row[0].tolist()
    sot, eot, pad = int(row[0]), int(row[1]), int(row[2])
    if len({sot, eot, pad}) != 3:
        raise ConfigError(f"cannot tell the tokenizer's start/end/pad ids apart (empty text tokenizes to {row[:4]})")
    return Specials(sot=sot, eot=eot, pad=pad, context_length=len(row))


def content_ids(tokenizer: Tokenizer, text: str, *, what: str = "text") -> list[int]:
    """Token ids of `text` without start/end tokens (never truncated).

    Uses `tokenizer.encode` where it exists (both supported tokenizers have it); otherwise cuts the ids between
    the start and end tokens of `tokenizer([text])` and refuses output that filled the whole context (possibly cut).

    Raises:
        DataError: `text` tokenizes to nothing (e.g. only punctuation the tokenizer drops, or empty).
    """
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        ids = [int(i) for i in encode(text)]
    else:
        sp = specials(tokenizer)
        row = tokenizer([text])[0].tolist()
        if sp.eot not in row or row.index(sp.eot) == len(row) - 1:
            raise DataError(f"{what} {text!r} fills the tokenizer's whole context of {sp.context_length} tokens")
        ids = [int(i) for i in row[1 : row.index(sp.eot)]]
    if not ids:
        raise DataError(f"{what} {text!r} tokenizes to nothing")
    return ids


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """Readable string of each token id (BPE '</w>' markers and toy '#' character prefixes removed)."""
    vocab = getattr(tokenizer, "vocab", None)
    decoder = getattr(tokenizer, "decoder", None)
    out = []
    for i in ids:
        if isinstance(vocab, (list, tuple)) and 0 <= i < len(vocab):
            s = str(vocab[i])
            s = s[1:] if s.startswith("#") and len(s) > 1 else s
        elif isinstance(decoder, dict) and i in decoder:
            s = str(decoder[i]).replace("</w>", "")
        elif callable(getattr(tokenizer, "decode", None)):
            s = str(tokenizer.decode([i])).strip()
        else:
            s = f"<{i}>"
        out.append(s)
    return out


def vocab_size(tokenizer: Any, fallback: int) -> int:
    """Number of token ids of a tokenizer (its vocab or encoder table), else `fallback` (the embedding rows)."""
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, (list, tuple)):
        return len(vocab)
    encoder = getattr(tokenizer, "encoder", None)
    if isinstance(encoder, dict):
        return len(encoder)
    return fallback
