"""When a stop reaches a Tune experiment: between a trial's checkpoint saves, never inside one.

Tune takes a trial's report in one step of its loop (its result is logged and counted) and commits
the checkpoint reported with it in a later step (the trial's `save`). Asked to stop in between, Tune
saves its experiment state without that checkpoint, and --resume trains the epoch again from the
one before (the same numbers, time lost, and the epoch reported twice). This callback, part of every
experiment's RunConfig, lets `interrupts` ask Tune to stop only after a step that left no trial
saving: one or two steps (a fraction of a second) after the signal."""

from __future__ import annotations

from ray.tune import Callback

from pneumo_ray.distributed import interrupts


class StopBetweenSaves(Callback):
    def setup(self, **info: object) -> None:
        interrupts.tune_waits()

    def on_step_end(self, iteration: int, trials: list, **info: object) -> None:
        if interrupts.requested():  # the trials are looked at only once a signal came
            interrupts.tune_step_ended(any(t.is_saving for t in trials))
