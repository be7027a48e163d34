"""Progress of a training loop: a Keras progress bar on a TTY, plain log lines otherwise."""
from __future__ import annotations

import sys

import keras


class Progress:
    """One epoch's progress.

    Args:
      epoch, epochs: this epoch (from 0) and the number of epochs.
      steps: steps in the epoch (None if unknown).
      log_every: without a TTY, print a line every this many steps.
      start_step: steps already done (a resumed epoch).
      stateful_metrics: metrics shown as their latest value on the bar, not an epoch mean.
    """

    def __init__(self, epoch, epochs, steps, log_every, start_step, stateful_metrics=None):
        self.epoch, self.epochs, self.steps, self.log_every = epoch, epochs, steps, log_every
        self.bar = None
        if sys.stdout.isatty():
            print(f"Epoch {epoch + 1}/{epochs}")
            self.bar = keras.utils.Progbar(steps, stateful_metrics=stateful_metrics)
            if start_step:
                self.bar.update(start_step)

    def update(self, step, metrics):
        if self.bar is not None:
            self.bar.update(step, values=list(metrics.items()))
        elif step % self.log_every == 0:
            values = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"epoch {self.epoch} step {step}/{self.steps or '?'} {values}", flush=True)
