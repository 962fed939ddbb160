"""A training time budget: fewer epochs on a slower machine, with the learning-rate decay still completed.

`heartwatch denoise train` runs a fixed number of epochs under a cosine learning-rate decay. On a
machine slower than the one the default was tuned on, those epochs can take far longer than a user
budgets for. ``TimeBudget`` is a Keras callback that, after each epoch, estimates how many epochs
fit in the budget from the epochs timed so far (``affordable_epochs``, from the second epoch on);
when that is fewer than planned it shortens the cosine decay (``CosineSchedule``, whose length is a
variable) so the rate still ends at its floor, and stops training at the new last epoch. On a fast
enough machine nothing changes. The plan only ever shrinks: a faster epoch later does not lengthen it.
"""

from __future__ import annotations

import logging
import math
import statistics
import time

import keras
import tensorflow as tf

LOGGER = logging.getLogger(__name__)


def affordable_epochs(planned: int, epoch_seconds: list[float], budget_seconds: float) -> int:
    """How many epochs in all fit in ``budget_seconds``, given the durations of the epochs run so far.

    The first epoch also builds and traces the model (here about twice a typical epoch), so it is never
    the estimate: until a second epoch is timed the answer is ``planned`` (or the epochs run, once they
    alone spend the budget); after that, each further epoch is expected to take the median of the epochs
    after the first. Never fewer than the epochs already run, never more than ``planned``.
    """
    done = len(epoch_seconds)
    if planned < 1 or not done or budget_seconds <= 0:
        raise ValueError(f"need planned >= 1, at least one epoch timed and a positive budget; got {planned}, "
                         f"{done} epochs and {budget_seconds} s")
    left = budget_seconds - sum(epoch_seconds)
    if left <= 0:
        return done
    if done < 2:
        return planned
    per_epoch = statistics.median(epoch_seconds[1:])
    more = math.floor(left / per_epoch) if per_epoch > 0 else planned
    return max(done, min(planned, done + more))


@keras.saving.register_keras_serializable(package="heartwatch")
class CosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up from ``floor · rate`` over ``warmup_steps``, then a cosine decay from ``rate`` down
    to ``floor · rate`` over ``decay_steps`` (as Keras's ``CosineDecay`` with ``alpha=floor``).

    ``decay_steps`` lives in a variable, so ``shorten`` can end the decay sooner while training runs.
    """

    def __init__(self, rate: float, decay_steps: int, floor: float, warmup_steps: int = 0):
        if rate <= 0 or decay_steps < 1 or not 0 <= floor <= 1 or warmup_steps < 0:
            raise ValueError(f"need rate > 0, decay_steps >= 1, 0 <= floor <= 1 and warmup_steps >= 0; got {rate}, "
                             f"{decay_steps}, {floor} and {warmup_steps}")
        self.rate = float(rate)
        self.floor = float(floor)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = tf.Variable(float(decay_steps), trainable=False, dtype=tf.float32, name="decay_steps")

    def shorten(self, decay_steps: int) -> None:
        """Ends the cosine decay after ``decay_steps`` steps (counted after the warm-up) instead."""
        self.decay_steps.assign(float(max(1, decay_steps)))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        floor_rate = self.rate * self.floor
        if self.warmup_steps:
            warming = floor_rate + (self.rate - floor_rate) * step / self.warmup_steps
        else:
            warming = self.rate
        progress = tf.minimum(tf.maximum(step - self.warmup_steps, 0.0) / self.decay_steps, 1.0)
        decayed = floor_rate + (self.rate - floor_rate) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warming, decayed)

    def get_config(self):
        return {"rate": self.rate, "decay_steps": int(self.decay_steps.numpy()), "floor": self.floor,
                "warmup_steps": self.warmup_steps}


class TimeBudget(keras.callbacks.Callback):
    """Stops training at the last epoch that fits in ``budget_seconds`` and shortens ``schedule`` to end there.

    ``schedule`` is the optimiser's ``CosineSchedule`` (None for a constant or plateau rate: then only the
    stop applies). ``clock`` returns seconds (``time.perf_counter``; tests pass their own).
    ``planned_epochs`` and ``epochs`` afterwards tell what was planned and what the budget allowed.
    """

    def __init__(self, budget_seconds: float, planned_epochs: int, steps_per_epoch: int,
                 schedule: CosineSchedule | None = None, clock=time.perf_counter):
        super().__init__()
        if budget_seconds <= 0 or planned_epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"need a positive budget, planned_epochs >= 1 and steps_per_epoch >= 1; got "
                             f"{budget_seconds}, {planned_epochs} and {steps_per_epoch}")
        self.budget_seconds = budget_seconds
        self.planned_epochs = planned_epochs
        self.epochs = planned_epochs
        self.steps_per_epoch = steps_per_epoch
        self.schedule = schedule
        self.clock = clock
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(self.clock() - self.epoch_started)
        affordable = affordable_epochs(self.epochs, self.epoch_seconds, self.budget_seconds)
        if affordable < self.epochs:
            LOGGER.info("time budget %.1f min: at %.1f s an epoch, %d of the %d planned epochs fit; the learning-rate "
                        "decay now ends at epoch %d", self.budget_seconds / 60, self.epoch_seconds[-1],
                        affordable, self.planned_epochs, affordable)
            self.epochs = affordable
            if self.schedule is not None:
                self.schedule.shorten(affordable * self.steps_per_epoch - self.schedule.warmup_steps)
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True
