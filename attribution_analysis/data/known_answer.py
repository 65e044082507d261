"""A classification task whose decisive input positions are known exactly ("key count").

Each sequence is ``[CLS] t_1 ... t_n [SEP]`` with ``n`` content tokens. Some of them are *keys*
(any of ``n_key_tokens`` token ids); every other content token is a *filler* drawn from a pool
that carries no information. The label is the number of keys (one class per possible count).
The gold rationale of an example is its key positions, and it is the unique smallest set of
tokens that keeps the decision: replacing any key by anything that is not a key changes the
count, hence the label, and no filler matters. Nothing shared across examples can stand in for
a removed key either (a baseline vector that looked like a key would add a key at every masked
position). Positions, lengths and counts vary from example to example, so an explainer cannot
memorise positions. Examples with zero keys exist (the model must learn what "no key" looks
like) but have no rationale; evaluations skip them.

Vocabulary (ids): ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, then the ``n_key_tokens``
key tokens, then the ``n_fillers`` fillers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD, UNK, CLS, SEP, MASK)


@dataclass(frozen=True)
class KeyCountTask:
    """Sizes of the key-count task.

    Attributes:
        n_key_tokens: distinct key token ids.
        n_fillers: filler token ids.
        min_len, max_len: range of content lengths (inclusive).
        max_keys: keys per sequence are drawn uniformly from ``0 .. max_keys``.
    """

    n_key_tokens: int = 4
    n_fillers: int = 40
    min_len: int = 8
    max_len: int = 14
    max_keys: int = 3

    @property
    def num_labels(self) -> int:
        return self.max_keys + 1

    @property
    def first_key(self) -> int:
        return len(SPECIAL_IDS)

    @property
    def first_filler(self) -> int:
        return self.first_key + self.n_key_tokens

    @property
    def vocab_size(self) -> int:
        return self.first_filler + self.n_fillers

    @property
    def max_tokens(self) -> int:
        """Longest tokenised sequence (content plus [CLS] and [SEP])."""
        return self.max_len + 2

    def generate(self, n: int, seed: int) -> KeyCountData:
        """``n`` examples drawn with a dedicated generator (same seed, same tensors)."""
        gen = torch.Generator().manual_seed(seed)
        width = self.max_tokens
        ids = torch.full((n, width), PAD, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        rationale = torch.zeros((n, width), dtype=torch.long)
        labels = torch.zeros(n, dtype=torch.long)
        for i in range(n):
            length = int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=gen))
            k = int(torch.randint(self.max_keys + 1, (1,), generator=gen))
            content = self.first_filler + torch.randint(self.n_fillers, (length,), generator=gen)
            positions = torch.randperm(length, generator=gen)[:k]
            keys = self.first_key + torch.randint(self.n_key_tokens, (k,), generator=gen)
            content[positions] = keys
            ids[i, 0], ids[i, 1 : length + 1], ids[i, length + 1] = CLS, content, SEP
            mask[i, : length + 2] = 1
            rationale[i, positions + 1] = 1
            labels[i] = k
        return KeyCountData(ids, mask, labels, rationale)


class KeyCountData(Dataset):
    """Tensors of a key-count sample: ``input_ids``, ``attention_mask`` and ``rationale``
    ``[n, tokens]`` (rationale 1 at key positions) and ``labels [n]``."""

    def __init__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        rationale: torch.Tensor,
    ) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.labels = labels
        self.rationale = rationale

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
            "rationale": self.rationale[i],
            "example_index": i,
        }


__all__ = ["KeyCountData", "KeyCountTask", "SPECIAL_IDS"]
