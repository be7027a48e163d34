"""The shared runtime of every stage: the run skeleton, strategies, optimizers, losses, progress."""
