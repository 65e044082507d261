"""A small ``transformers`` BERT sequence classifier built from scratch and trained on token
tensors: the explained model of the known-answer benchmark (``data/known_answer.py``)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import BertConfig, BertForSequenceClassification

from attribution_analysis.utils.modes import eval_mode


def small_bert_classifier(
    vocab_size: int,
    max_tokens: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_labels: int = 2,
    seed: int = 0,
) -> BertForSequenceClassification:
    """A randomly initialised BERT classifier (no dropout, so training is the only noise)."""
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_tokens,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)


def train_sequence_classifier(
    model: BertForSequenceClassification,
    train: Dataset,
    epochs: int = 10,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Train with Adam and cross-entropy on batches of ``input_ids``/``attention_mask``
    ``[batch, tokens]`` and ``labels [batch]``; returns the mean loss of each epoch. The model
    ends in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(epochs):
        running, n = 0.0, 0
        for batch in loader:
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            sched.step()
            running += out.loss.item() * len(batch["labels"])
            n += len(batch["labels"])
        losses.append(running / n)
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: BertForSequenceClassification, data: Dataset, batch_size: int = 256) -> float:
    """Share of examples whose argmax class equals ``labels``."""
    correct = 0
    with eval_mode(model):
        for batch in DataLoader(data, batch_size=batch_size):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(data)


__all__ = ["accuracy", "small_bert_classifier", "train_sequence_classifier"]
