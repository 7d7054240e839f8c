"""How a serving process sets up its garbage collector (``server/app.tune_gc``)."""

from __future__ import annotations

import gc

from webpubsub.server.app import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_start_up_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what start-up made is out of every collection
        assert GC_THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
