"""Title token tables: every news title tokenised once with the encoder's own tokenizer.

Row 0 of a table is the padding news item (``[CLS] [SEP]``), used for padded history slots and
candidates, so no row is ever fully masked. The table is cached on disk under a key made of the
tokenizer (class, vocabulary, special tokens), ``max_title_len`` and the exact titles, so a second
run with the same inputs skips tokenisation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from attribution_analysis.data.mind import NewsRecord
from attribution_analysis.utils.io import UnreadableFileError, atomic_torch_save, load_torch_file

PAD_NEWS_INDEX = 0
CACHE_VERSION = 2  # 2: special-token strings in titles are text


@dataclass
class TokenTable:
    """Token ids of every news title.

    Attributes:
        news_ids: ``[num_news + 1]`` ids; entry 0 is ``"<pad>"``.
        input_ids: ``[num_news + 1, max_title_len]`` token ids (right-padded).
        attention_mask: ``[num_news + 1, max_title_len]`` 1 for real tokens, 0 for padding.
    """

    news_ids: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        self.index = {news_id: i for i, news_id in enumerate(self.news_ids)}

    def __len__(self) -> int:
        return len(self.news_ids)

    def lookup(self, news_ids: list[str] | tuple[str, ...]) -> list[int]:
        """Row indices of ``news_ids`` (``KeyError`` names a missing id)."""
        try:
            return [self.index[n] for n in news_ids]
        except KeyError as exc:
            raise KeyError(f"news id {exc.args[0]!r} is not in the token table") from None

    def rows(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of rows ``indices`` (any shape ``S``), trimmed to the longest title.

        Returns ``input_ids [*S, tokens]`` and ``attention_mask [*S, tokens]``.
        """
        ids = self.input_ids[indices]
        mask = self.attention_mask[indices]
        length = int(mask.sum(-1).max().item()) if mask.numel() else 1
        return ids[..., : max(length, 1)], mask[..., : max(length, 1)]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what determines the tokenizer's output: class, vocabulary, special tokens."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    vocab = tokenizer.get_vocab()
    digest.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8"))
    digest.update(json.dumps(tokenizer.all_special_tokens).encode("utf-8"))
    digest.update(str(getattr(tokenizer, "do_lower_case", "")).encode())
    return digest.hexdigest()[:16]


def _cache_key(news: dict[str, NewsRecord], tokenizer, max_len: int) -> str:
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION}|{tokenizer_fingerprint(tokenizer)}|{max_len}|".encode())
    for news_id in sorted(news):
        digest.update(f"{news_id}\t{news[news_id].title}\n".encode())
    return digest.hexdigest()[:24]


TOKENIZE_CHUNK = 8192
"""Titles tokenised per call; tables of more than :data:`PROGRESS_FROM` titles show a bar."""
PROGRESS_FROM = 20_000


def _tokenize(news_ids: list[str], titles: list[str], tokenizer, max_len: int) -> TokenTable:
    texts = ["", *titles]
    ids, masks = [], []
    bar = tqdm(total=len(texts), desc="token table", unit="title",
               disable=len(texts) <= PROGRESS_FROM)  # fmt: skip
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        encoded = tokenizer(
            texts[start : start + TOKENIZE_CHUNK],
            padding="max_length",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
            return_token_type_ids=False,
            split_special_tokens=True,  # a title's literal "[SEP]" is text, not a separator
        )
        ids.append(encoded["input_ids"].long())
        masks.append(encoded["attention_mask"].long())
        bar.update(len(encoded["input_ids"]))
    bar.close()
    return TokenTable(["<pad>", *news_ids], torch.cat(ids), torch.cat(masks))


def build_token_table(
    news: dict[str, NewsRecord],
    tokenizer,
    max_title_len: int = 30,
    cache_dir: str | Path | None = None,
) -> TokenTable:
    """Tokenise every title (news ids in sorted order), using the disk cache when present."""
    if max_title_len < 3:
        raise ValueError(f"max_title_len must be >= 3, got {max_title_len}")
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"tokens_{_cache_key(news, tokenizer, max_title_len)}.pt"
        if cache_path.is_file():
            try:
                blob = load_torch_file(cache_path, "token cache")
                return TokenTable(blob["news_ids"], blob["input_ids"], blob["attention_mask"])
            except (UnreadableFileError, KeyError, TypeError) as exc:
                print(f"[data] {exc}: rebuilding it")
    news_ids = sorted(news)
    table = _tokenize(news_ids, [news[n].title for n in news_ids], tokenizer, max_title_len)
    if cache_path is not None:
        atomic_torch_save(
            cache_path,
            {
                "news_ids": table.news_ids,
                "input_ids": table.input_ids,
                "attention_mask": table.attention_mask,
            },
        )
    return table
