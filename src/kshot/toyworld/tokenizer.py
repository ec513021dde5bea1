"""Word-level tokenizer of the toy CLIP, with character fallback for words outside the caption vocabulary.

Caption words map to one id each. Any other word (an opaque class name such as "zorvik", a typo) is spelled as
character tokens followed by an end-of-word token, so different unknown words always get different sequences (there
is no shared UNK word token). Ids: 0 = pad, 1 = start, then words, characters, end-of-word, unknown character, and
end-of-text LAST: open_clip's default 'argmax' text pooling reads the feature at the highest token id.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch

from kshot.errors import ConfigError

PAD, SOT, EOT, EOW, UNK_CHAR = "<pad>", "<sot>", "<eot>", "</w>", "<unk_char>"
CHARS: str = string.ascii_lowercase + string.digits + "-'!?,.&()/:;+"
_SPLIT = re.compile(r"[^\W_]+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lower-case `text`, treat '_' as a space, split into runs of letters/digits and single punctuation marks."""
    return _SPLIT.findall(text.lower().replace("_", " "))


def build_vocab(words: Sequence[str]) -> list[str]:
    """Full token list for a word vocabulary: specials, sorted unique words, characters, EOT last."""
    uniq = sorted(set(words) - {PAD, SOT, EOT, EOW, UNK_CHAR})
    return [PAD, SOT, *uniq, *(f"#{c}" for c in CHARS), EOW, UNK_CHAR, EOT]


class ToyTokenizer:
    """Callable `list[str] -> LongTensor [N, context_length]`; sequences are `<sot> tokens <eot> <pad>...`.

    Args:
        vocab: token strings by id, as `build_vocab` returns (EOT must be the last = highest id).
        context_length: padded length; longer texts are cut and keep `<eot>` in the last slot (as open_clip does).
    """

    def __init__(self, vocab: Sequence[str], context_length: int = 32) -> None:
        vocab = list(vocab)
        if not vocab or vocab[-1] != EOT or vocab[0] != PAD or vocab[1] != SOT:
            raise ConfigError("toy tokenizer vocab must start with '<pad>', '<sot>' and end with '<eot>'")
        if len(set(vocab)) != len(vocab):
            raise ConfigError("toy tokenizer vocab has duplicate tokens")
        if context_length < 3:
            raise ConfigError(f"context_length must be >= 3, got {context_length}")
        self.vocab = vocab
        self.context_length = context_length
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.pad_id, self.sot_id, self.eot_id = 0, 1, len(vocab) - 1
        self._eow, self._unk = self.ids[EOW], self.ids[UNK_CHAR]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without start/end tokens."""
        out: list[int] = []
        for w in split_words(text):
            i = self.ids.get(w)
            if i is not None and not w.startswith("#"):
                out.append(i)
            else:
                out.extend(self.ids.get(f"#{c}", self._unk) for c in w)
                out.append(self._eow)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text of a sequence of ids (specials dropped, spelled words re-joined)."""
        words, chars = [], []
        for i in ids:
            t = self.vocab[int(i)]
            if t in (PAD, SOT, EOT):
                continue
            if t.startswith("#"):
                chars.append(t[1:])
            elif t == UNK_CHAR:
                chars.append("?")
            elif t == EOW:
                words.append("".join(chars))
                chars = []
            else:
                words.append(t)
        if chars:
            words.append("".join(chars))
        return " ".join(words)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text)][: self.context_length - 1] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
