"""The one error of the pruning core (its own module, so every part of the core can raise it)."""


class PruningError(RuntimeError):
    """A model whose graph cannot be traced or pruned, or that has nothing to prune at the asked scope."""
