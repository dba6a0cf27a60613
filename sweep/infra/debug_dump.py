"""A diagnostic for a sweep that seems stuck: with ``SEATBELT_DEBUG_DUMP=FILE`` set, the driver
appends to FILE, on ``kill -USR2 <driver pid>`` (Tune takes SIGUSR1 as its stop signal), every thread's stack, the Tune controller's
view (each trial's status and resources, the searcher's live trials and position) and Ray's
(available resources, placement groups). Off unless set; used to find issue 33's cause."""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import sys
import time
import traceback

ENV = "SEATBELT_DEBUG_DUMP"


def install() -> None:
    path = os.environ.get(ENV)
    if not path or not hasattr(signal, "SIGUSR2"):
        return
    signal.signal(signal.SIGUSR2, lambda *_: dump(path))


def dump(path: str) -> None:
    with open(path, "a") as out:
        out.write(f"=== {time.strftime('%H:%M:%S')} pid {os.getpid()}\n--- threads\n")
        for ident, frame in sys._current_frames().items():
            out.write(f"thread {ident}:\n{''.join(traceback.format_stack(frame))}\n")
        try:
            out.write(tune_state())
        except Exception as exc:  # a diagnostic: say what failed, never raise in a signal handler
            out.write(f"tune state: {type(exc).__name__}: {exc}\n")
        try:
            out.write(ray_state())
        except Exception as exc:
            out.write(f"ray state: {type(exc).__name__}: {exc}\n")
        out.flush()
        faulthandler.dump_traceback(out, all_threads=True)


def tune_state() -> str:
    from ray.tune.execution.tune_controller import TuneController

    lines = ["--- tune"]
    for controller in [o for o in gc.get_objects() if isinstance(o, TuneController)]:
        lines.append(f"controller finished={controller.is_finished()} "
                     f"pending={len(controller._pending_trials)} running={len(controller._running_trials)} "
                     f"paused={len(controller._paused_trials)} live={len(controller._live_trials)} "
                     f"max_pending={controller._max_pending_trials} "
                     f"live_actors={controller._actor_manager.num_live_actors}")
        for trial in controller.get_trials():
            lines.append(f"  trial {trial.trial_id} {trial.status} {trial.config.get('trial', {}).get('trial_id')} "
                         f"resources={trial.placement_group_factory} restore={trial.checkpoint}")
        search = controller._search_alg
        lines.append(f"  search {type(search).__name__} finished={search.is_finished()} "
                     f"max_concurrent={getattr(search, 'max_concurrent', None)} "
                     f"live_trials={sorted(getattr(search, '_live_trials', []))} "
                     f"counters={[getattr(i, 'counter', None) for i in getattr(search, '_iterators', [])]} "
                     f"total={getattr(search, 'total_samples', None)}")
    return "\n".join(lines) + "\n"


def ray_state() -> str:
    import ray
    from ray.util import placement_group_table

    lines = ["--- ray", f"cluster {ray.cluster_resources()}", f"available {ray.available_resources()}"]
    for pg_id, pg in placement_group_table().items():
        lines.append(f"  pg {pg_id} {pg.get('state')} {pg.get('bundles')}")
    return "\n".join(lines) + "\n"
