"""Train/eval mode and gradient flags of ``torch`` modules, set for a block and restored after it.

The one place where the project switches a model into eval mode (dropout off) or freezes it:
every caller uses these context managers instead of saving and restoring flags by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: object) -> Iterator[None]:
    """Eval mode for every ``nn.Module`` among ``modules`` (other objects are ignored) inside
    the block. Afterwards each submodule gets back its own previous mode, so a part that was in
    eval mode inside a training model stays so; restored on error too."""
    mods = [m for m in modules if isinstance(m, nn.Module)]
    flags = [(sub, sub.training) for m in mods for sub in m.modules()]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for sub, flag in flags:
            sub.training = flag


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for ``model``'s weights inside the block (an explained model
    that an attribution method trains against); modes and ``requires_grad`` flags restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
