"""NRMS (Wu et al., EMNLP 2019) with a pretrained language model as its news encoder (PLM-NR).

News encoder: PLM token states -> linear -> multi-head self-attention (batch-first, padding
masked) -> additive attention pooling (masked) -> news vector ``[dim]``.
User encoder: multi-head self-attention + additive attention over the history's news vectors.
Score: ``dot(user, candidate)``; click probability ``sigmoid(score)``.

The news encoder exposes what attribution needs: the word-embedding lookup
(:meth:`NewsEncoder.embed_words`), a forward from word embeddings that can return every layer's
hidden state and edit one of them (:meth:`NewsEncoder.forward_from_word_embeddings`), and
:meth:`NRMS.user_vector` from history vectors. Works with BERT-style ``transformers`` encoders
(``.embeddings`` with ``word_embeddings`` and ``.encoder.layer``: BERT, RoBERTa, ELECTRA, MiniLM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

HiddenEdit = Callable[[torch.Tensor], torch.Tensor]


def masked_fill_min(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Set positions where ``keep`` is False to the dtype's most negative value."""
    return x.masked_fill(~keep, torch.finfo(x.dtype).min)


class AdditiveAttention(nn.Module):
    """Additive attention pooling: ``softmax(q^T tanh(W x_i + b))`` over unmasked positions."""

    def __init__(self, dim: int, query_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, query_dim)
        self.query = nn.Linear(query_dim, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x [batch, n, dim]`` over ``mask [batch, n]`` (bool).

        Returns the pooled ``[batch, dim]`` and the weights ``[batch, n]`` (exactly 0 on padding).
        """
        logits = self.query(torch.tanh(self.proj(x))).squeeze(-1)
        weights = torch.softmax(masked_fill_min(logits.float(), mask.bool()), dim=-1)
        weights = weights * mask.to(weights.dtype)
        pooled = torch.einsum("bn,bnd->bd", weights.to(x.dtype), x)
        return pooled, weights


@dataclass
class NewsEncoderOutput:
    """``vectors [batch, dim]``, ``token_weights [batch, tokens]`` (additive attention),
    ``hidden_states``: embedding output and every PLM layer's output, each
    ``[batch, tokens, hidden]`` (only when asked)."""

    vectors: torch.Tensor
    token_weights: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, tokens]`` 0/1 mask -> additive ``[batch, 1, 1, tokens]`` mask for PLM layers."""
    keep = attention_mask[:, None, None, :].bool()
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


class NewsEncoder(nn.Module):
    """PLM -> multi-head self-attention -> additive attention, as in PLM-NR."""

    def __init__(
        self,
        plm: nn.Module,
        num_heads: int = 20,
        head_dim: int = 20,
        query_dim: int = 200,
        dropout: float = 0.2,
        fine_tune_layers: int = 2,
    ) -> None:
        super().__init__()
        if not hasattr(plm, "embeddings") or not hasattr(getattr(plm, "encoder", None), "layer"):
            raise ValueError(
                f"{type(plm).__name__} is not a BERT-style encoder (.embeddings, .encoder.layer)"
            )
        self.plm = plm
        self.dim = num_heads * head_dim
        self.proj = nn.Linear(plm.config.hidden_size, self.dim)
        self.mhsa = nn.MultiheadAttention(self.dim, num_heads, dropout=dropout, batch_first=True)
        self.pool = AdditiveAttention(self.dim, query_dim)
        self.dropout = nn.Dropout(dropout)
        self.set_fine_tune_layers(fine_tune_layers)

    @property
    def layers(self) -> nn.ModuleList:
        return self.plm.encoder.layer

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.plm.config.hidden_size)

    def set_fine_tune_layers(self, n: int) -> None:
        """Train only the top ``n`` PLM layers (0 = frozen PLM; >= depth = all, embeddings too)."""
        if n < 0:
            raise ValueError(f"fine_tune_layers must be >= 0, got {n}")
        self.fine_tune_layers = min(n, self.num_layers)
        self.frozen_layers = self.num_layers - self.fine_tune_layers
        all_trainable = n > self.num_layers or self.frozen_layers == 0
        for p in self.plm.embeddings.parameters():
            p.requires_grad_(all_trainable)
        for i, layer in enumerate(self.layers):
            for p in layer.parameters():
                p.requires_grad_(i >= self.frozen_layers)

    @property
    def caches_lower_layers(self) -> bool:
        """Whether the frozen bottom (embeddings + frozen layers) can be precomputed."""
        return not any(p.requires_grad for p in self.plm.embeddings.parameters())

    def embed_words(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word-embedding lookup only (before position embeddings and LayerNorm).

        ``input_ids [batch, tokens]`` -> ``[batch, tokens, hidden]``.
        """
        return self.plm.embeddings.word_embeddings(input_ids)

    def run_layers(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int,
        end: int,
        collect: list[torch.Tensor] | None = None,
        edit: dict[int, HiddenEdit] | None = None,
    ) -> torch.Tensor:
        """Run PLM layers ``start..end-1`` on ``hidden [batch, tokens, hidden]``.

        ``collect`` receives each layer's output; ``edit[k]`` replaces layer k's output
        (``k`` counts layers from 1, 0 being the embedding output) before the next layer.
        A batch without padding runs without a mask (attention's unmasked kernel).
        """
        ext = None
        if not bool(attention_mask.all()):
            ext = extended_attention_mask(attention_mask, hidden.dtype)
        for k in range(start, end):
            out = self.layers[k](hidden, attention_mask=ext)
            hidden = out[0] if isinstance(out, tuple) else out
            if edit and (k + 1) in edit:
                hidden = edit[k + 1](hidden)
            if collect is not None:
                collect.append(hidden)
        return hidden

    def pool_tokens(
        self, states: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top of the news encoder: PLM token states ``[batch, tokens, hidden]`` ->
        news vectors ``[batch, dim]`` and additive-attention weights ``[batch, tokens]``."""
        keep = attention_mask.bool()
        x = self.proj(self.dropout(states))
        x, _ = self.mhsa(x, x, x, key_padding_mask=~keep, need_weights=False)
        return self.pool(self.dropout(x), keep)

    def forward_from_word_embeddings(
        self,
        word_embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        output_hidden_states: bool = False,
        edit: dict[int, HiddenEdit] | None = None,
    ) -> NewsEncoderOutput:
        """Encode titles from (possibly masked) word embeddings ``[batch, tokens, hidden]``.

        Position and token-type embeddings and the embedding LayerNorm are applied here, so a
        masked token keeps its position. ``edit[0]`` edits the embedding output, ``edit[k]``
        layer k's output (hidden-state masking).
        """
        hidden = self.plm.embeddings(inputs_embeds=word_embeddings)
        if edit and 0 in edit:
            hidden = edit[0](hidden)
        collect = [hidden] if output_hidden_states else None
        hidden = self.run_layers(hidden, attention_mask, 0, self.num_layers, collect, edit)
        vectors, weights = self.pool_tokens(hidden, attention_mask)
        return NewsEncoderOutput(vectors, weights, tuple(collect) if collect else None)

    def plm_states(
        self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The PLM's embedding output and every layer's output (each ``[batch, tokens,
        hidden]``), as :meth:`forward_from_word_embeddings` collects them, without the head."""
        hidden = self.plm.embeddings(inputs_embeds=word_embeddings)
        collect = [hidden]
        self.run_layers(hidden, attention_mask, 0, self.num_layers, collect)
        return tuple(collect)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs
    ) -> NewsEncoderOutput:
        """Encode titles ``input_ids [batch, tokens]`` -> :class:`NewsEncoderOutput`."""
        return self.forward_from_word_embeddings(
            self.embed_words(input_ids), attention_mask, **kwargs
        )

    @torch.no_grad()
    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of the frozen bottom (embeddings + frozen layers): ``[batch, tokens, hidden]``."""
        hidden = self.plm.embeddings(input_ids=input_ids)
        return self.run_layers(hidden, attention_mask, 0, self.frozen_layers)

    def forward_from_lower(self, lower: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """News vectors ``[batch, dim]`` from cached :meth:`lower_states`."""
        hidden = self.run_layers(lower, attention_mask, self.frozen_layers, self.num_layers)
        return self.pool_tokens(hidden, attention_mask)[0]


class UserEncoder(nn.Module):
    """Multi-head self-attention + additive attention over history news vectors.

    A user with an empty history gets a learned vector ``empty_user``.
    """

    def __init__(self, dim: int, num_heads: int, query_dim: int, dropout: float) -> None:
        super().__init__()
        self.mhsa = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.pool = AdditiveAttention(dim, query_dim)
        self.dropout = nn.Dropout(dropout)
        self.empty_user = nn.Parameter(torch.zeros(dim))

    def forward(self, history: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """``history [batch, history, dim]`` and ``history_mask [batch, history]`` -> user
        vectors ``[batch, dim]``."""
        keep = history_mask.bool()
        has_history = keep.any(-1)
        safe = keep.clone()
        safe[~has_history, 0] = True
        x, _ = self.mhsa(history, history, history, key_padding_mask=~safe, need_weights=False)
        user, _ = self.pool(self.dropout(x), safe)
        return torch.where(has_history[:, None], user, self.empty_user.to(user.dtype))


class NRMS(nn.Module):
    """The recommender: news encoder, user encoder, dot-product scores."""

    def __init__(self, news_encoder: NewsEncoder, user_encoder: UserEncoder) -> None:
        super().__init__()
        self.news_encoder = news_encoder
        self.user_encoder = user_encoder

    @property
    def dim(self) -> int:
        return self.news_encoder.dim

    def user_vector(
        self, history_vectors: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """User vectors ``[batch, dim]`` from history vectors ``[batch, history, dim]``."""
        return self.user_encoder(history_vectors, history_mask)

    @staticmethod
    def score(user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Click scores: ``user [batch, dim]`` . ``candidates [batch, n, dim]`` -> ``[batch, n]``
        (or ``[batch, dim]`` candidates -> ``[batch]``)."""
        if candidates.dim() == 2:
            return (user * candidates).sum(-1)
        return torch.einsum("bd,bnd->bn", user, candidates)

    def click_probability(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``sigmoid(score)``, same shapes as :meth:`score`."""
        return torch.sigmoid(self.score(user, candidates))
