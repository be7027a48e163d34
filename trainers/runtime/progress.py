"""Progress of a training loop: a Keras progress bar on a TTY, log lines otherwise.

Everything but the bar goes through `logging` (logger "trainers..."); the command line
shows those lines (trainers/cli.py), a library user decides with their logging setup.
"""
from __future__ import annotations

import logging
import sys

import keras

logger = logging.getLogger(__name__)


class Progress:
    """One epoch's progress.

    Args:
      epoch, epochs: this epoch (from 0) and the number of epochs.
      steps: steps in the epoch (None if unknown).
      log_every: without a TTY, log a line every this many steps.
      start_step: steps already done (a resumed epoch).
      stateful_metrics: metrics shown as their latest value on the bar, not an epoch mean.
    """

    def __init__(self, epoch, epochs, steps, log_every, start_step, stateful_metrics=None):
        self.epoch, self.epochs, self.steps, self.log_every = epoch, epochs, steps, log_every
        self.bar = None
        if sys.stdout.isatty() and logger.isEnabledFor(logging.INFO):
            logger.info("Epoch %d/%d", epoch + 1, epochs)
            self.bar = keras.utils.Progbar(steps, stateful_metrics=stateful_metrics)
            if start_step:
                self.bar.update(start_step)

    def update(self, step, metrics):
        if self.bar is not None:
            self.bar.update(step, values=list(metrics.items()))
        elif step % self.log_every == 0:
            values = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            logger.info("epoch %d step %d/%s %s", self.epoch, step, self.steps or "?", values)


def epoch_line(epoch: int, metrics: dict) -> None:
    """Logs one epoch's summary line: "epoch N: name value ...". """
    logger.info("epoch %d: %s", epoch, " ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
