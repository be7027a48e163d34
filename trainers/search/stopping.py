"""DARTS+ early stopping (Liang et al. 2019, arXiv 1909.06035): stop a search before it collapses.

Two triggers, checked at the end of every epoch in which the architecture was trained
(from `arch_start_epoch` on: during a weights-only warm-up the alphas do not move, so
neither trigger would mean anything):

- `early_stop_skip_connect` = N: the derived normal cell holds at least N skip-connects
  (DARTS+ criterion 1, N = 2);
- `early_stop_patience` = P: the derived architecture has been the same for P epochs
  (DARTS+ criterion 2, "stable for a determined number of epochs", 10 in the paper).

When one fires, the search stops and its result is the architecture from before the
trigger: that of the last epoch that did not trigger (or of the initial alphas, if the
first trained epoch triggers). For the patience trigger it equals the current one.

The stop is part of the run's state: the variables here go into the run's checkpoints
(key "early_stopping"), so a stopped search run again does not run on, and rewrites the
same genotype.json.
"""
from __future__ import annotations

import json

import tensorflow as tf

from configs import ConfigError, SearchConfig
from darts_tf import search_space
from trainers.search.monitor import skip_connect_counts


class EarlyStopping:
    """The two DARTS+ triggers and what they need to remember across epochs and resumes.

    Args:
      config: the search config (early_stop, early_stop_skip_connect, early_stop_patience,
        arch_start_epoch).
      model: the searched model (its architecture: `darts_tf.search_space.export_architecture`).

    Raises:
      ConfigError: the skip-connect trigger for a model without a genotype (a user choice
        model has no skip_connect to count).
    """

    def __init__(self, config: SearchConfig, model):
        self.config, self.model = config, model
        self.enabled = config.early_stop
        if self.enabled and config.early_stop_skip_connect is not None and not hasattr(
                model, "genotype"):
            raise ConfigError(
                f"Invalid config value early_stop_skip_connect="
                f"{config.early_stop_skip_connect!r}: model {model.name!r} has no genotype "
                "(a user choice model), so there are no skip-connects to count; set "
                "early_stop_skip_connect=None to stop on early_stop_patience only.")
        self._stopped = tf.Variable(False, trainable=False)
        self._reason = tf.Variable("", trainable=False)       # JSON of `stop_record`
        self._previous = tf.Variable("", trainable=False)     # JSON of the last good architecture
        self._previous_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False)
        self._unchanged = tf.Variable(0, dtype=tf.int64, trainable=False)

    def state_objects(self) -> dict:
        """What the run's checkpoints hold (nothing when early stopping is off)."""
        if not self.enabled:
            return {}
        return {"early_stopping": tf.train.Checkpoint(
            stopped=self._stopped, reason=self._reason, previous=self._previous,
            previous_epoch=self._previous_epoch, unchanged=self._unchanged)}

    @property
    def stopped(self) -> bool:
        return bool(self._stopped.numpy())

    @property
    def stop_record(self) -> dict | None:
        """Why the search stopped (None: it did not): trigger, message, which epoch's
        architecture the result is (-1: the initial alphas') and that architecture."""
        return json.loads(self._reason.numpy().decode()) if self.stopped else None

    def start(self) -> None:
        """A fresh run: the initial alphas' architecture is the first "before"."""
        if self.enabled:
            self._previous.assign(json.dumps(search_space.export_architecture(self.model)))

    def end_of_epoch(self, epoch: int) -> dict | None:
        """Checks the triggers after `epoch`; returns `stop_record` if the search stops now."""
        if not self.enabled or self.stopped:
            return self.stop_record
        current = search_space.export_architecture(self.model)
        if epoch < self.config.arch_start_epoch:  # warm-up: nothing to judge yet
            self._remember(current, epoch)
            return None
        previous = json.loads(self._previous.numpy().decode())
        unchanged = int(self._unchanged.numpy()) + 1 if current == previous else 0
        self._unchanged.assign(unchanged)
        trigger = None
        counts = skip_connect_counts(self.model)
        skips, most = counts["normal"] if counts else 0, self.config.early_stop_skip_connect
        patience = self.config.early_stop_patience
        if most is not None and skips >= most:
            trigger = ("skip_connect", f"the normal cell holds {skips} skip-connects "
                       f"(early_stop_skip_connect={most})")
        elif patience is not None and unchanged >= patience:
            trigger = ("patience", f"the architecture has not changed for {unchanged} epochs "
                       f"(early_stop_patience={patience})")
        if trigger is None:
            self._remember(current, epoch)
            return None
        record = {"trigger": trigger[0], "epoch": epoch,
                  "message": f"stopped after epoch {epoch}: {trigger[1]}",
                  "architecture_epoch": int(self._previous_epoch.numpy()),
                  "architecture": previous}
        self._reason.assign(json.dumps(record))
        self._stopped.assign(True)
        return record

    def architecture(self) -> dict:
        """The search's result: the architecture from before the trigger, or the current one."""
        if self.stopped:
            return self.stop_record["architecture"]
        return search_space.export_architecture(self.model)

    def _remember(self, architecture, epoch):
        self._previous.assign(json.dumps(architecture))
        self._previous_epoch.assign(epoch)
