"""A worker: pop queued trials one at a time, evaluate, tell; any number may run at once.

Correctness with several workers (processes or machines) on one storage rests on one atomic
step: a WAITING trial is claimed by ``storage.set_trial_state_values(id, RUNNING)``, which
returns ``False`` when another worker won the race (the RDB storages update the row under a
state check; the journal storage serialises through its file lock). A worker only ever runs
trials it claimed, and stops when the queue is empty, so ``N`` queued trials give exactly
``N`` finished ones: none duplicated, none lost.

Crash safety: a claimed trial gets its first heartbeat at once (a trial without one is never
found stale by Optuna's RDB storages), then a thread records one every ``heartbeat_interval``
seconds while it runs. Before each claim the worker fails trials whose heartbeat is
older than the grace period (``optuna.storages.fail_stale_trials``), and the storage's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` re-queues their params; a finished trial
is never touched, so a SIGKILLed worker loses only the trial it was running, and that one is
retried. A worker killed between failing a stale trial and re-queuing it (two storage writes)
would leave that grid point with no retry: :func:`recover` also re-queues such orphans with
the storage's own retry callback, and :func:`claim` drops a retry that another one of the same
failed trial already covers (two workers repairing at once), so each point runs once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
Objective = Callable[["optuna.Trial"], Sequence[float]]


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What one worker did: trials completed, failed and pruned (infeasible), and the time."""

    completed: int
    failed: int
    pruned: int
    time_s: float

    @property
    def trials(self) -> int:
        return self.completed + self.failed + self.pruned


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move one WAITING trial of ``study`` to RUNNING; ``None`` if none is left."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                if _duplicate_retry(study, t):
                    continue
                _beat(storage, t._trial_id)  # a trial without a beat is never found stale
                return optuna.Trial(study, t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _retried(trial: optuna.trial.FrozenTrial) -> int | None:
    """The failed trial this one retries (the last of its ``retry_history``), or ``None``."""
    history = trial.system_attrs.get("retry_history") or ()
    return int(history[-1]) if history else None


def _duplicate_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` (just claimed) retries a failed trial that an earlier-numbered retry
    already covers; if so it is finished as FAIL with the reason and ``True`` is returned."""
    from optuna.trial import TrialState

    origin = _retried(trial)
    if origin is None:
        return False
    earlier = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < trial.number and _retried(t) == origin and t.state is not TrialState.FAIL
    ]
    if not earlier:
        return False
    storage = study._storage
    storage.set_trial_user_attr(
        trial._trial_id, "error", f"duplicate retry of trial {origin} (trial {earlier[0].number})"
    )
    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    log.warning("trial %d duplicated the retry of trial %d; dropped", trial.number, origin)
    return True


def _beat(storage: Any, trial_id: int) -> None:
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        storage.record_heartbeat(trial_id)


def recover(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating (their params are re-queued), and
    re-queue stale-failed trials whose retry was never written (see the module doc)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        _requeue_orphans(study)


def _requeue_orphans(study: optuna.Study) -> None:
    """Hand every FAIL trial that no worker failed (no ``error`` attr: it was failed as stale)
    and that no retry covers to the storage's retry callback (which honours ``max_retry``)."""
    from optuna.trial import TrialState

    retry = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if retry is None:
        return
    trials = study.get_trials(deepcopy=False)
    covered = {int(n) for t in trials for n in t.system_attrs.get("retry_history") or ()}
    for t in trials:
        if t.state is TrialState.FAIL and "error" not in t.user_attrs and t.number not in covered:
            log.debug("trial %d failed as stale with no retry: handing it to the retry", t.number)
            retry(study, t)


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``heartbeat_interval`` seconds in the block (the
    first one is written by :func:`claim`)."""
    storage: Any = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat is retried; the trial's outcome decides
                log.warning("heartbeat of trial %d failed", trial_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _finished(study: optuna.Study, trial_id: int) -> bool:
    """Whether the trial is no longer RUNNING in the storage (failed as stale by another
    worker while this one was paused)."""
    from optuna.trial import TrialState

    return study._storage.get_trial(trial_id).state is not TrialState.RUNNING


def _others_running(study: optuna.Study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_worker(
    study: optuna.Study,
    objective: Objective,
    *,
    max_trials: int | None = None,
    catch: tuple[type[BaseException], ...] = (),
    callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    wait: bool = True,
) -> WorkerReport:
    """Drain ``study``'s queue with ``objective`` (at most ``max_trials`` trials).

    Args:
        study: an Optuna study (e.g. from :func:`bitalloc.studies.load_study`).
        objective: ``objective(trial) -> values``; raising
            :class:`~bitalloc.studies.objective.Infeasible` or ``optuna.TrialPruned`` records
            the trial as PRUNED.
        max_trials: stop after this many trials (``None`` = until the queue is empty).
        catch: exception types recorded as a FAIL trial after which the worker goes on; any
            other exception is recorded as FAIL and re-raised.
        callback: called with ``(study, frozen_trial)`` after each finished trial.
        wait: when the queue is empty but other trials still run, poll (every second)
            until they finish or go stale and are re-queued, so the study is
            complete when the last worker returns. Only with a heartbeat storage (without
            one a dead worker's trial would be waited for forever).
    """
    import optuna
    from optuna.trial import TrialState

    from .objective import Infeasible

    if max_trials is not None and (not isinstance(max_trials, int) or max_trials < 0):
        raise ValueError(f"`max_trials` must be an int >= 0 or None, got {max_trials!r}")
    started = time.perf_counter()
    interval = getattr(study._storage, "get_heartbeat_interval", lambda: None)()
    wait, poll = wait and interval is not None, min(float(interval or 1), 1.0)
    counts = {TrialState.COMPLETE: 0, TrialState.FAIL: 0, TrialState.PRUNED: 0}
    while max_trials is None or sum(counts.values()) < max_trials:
        recover(study)
        trial = claim(study)
        if trial is None:
            if not (wait and _others_running(study)):
                break
            time.sleep(poll)  # a running trial may still fail and come back to the queue
            continue
        state, values, error = TrialState.COMPLETE, None, None
        with heartbeat(study, trial._trial_id):
            try:
                values = list(objective(trial))
            except (Infeasible, optuna.TrialPruned):
                state = TrialState.PRUNED
            except optuna.exceptions.UpdateFinishedTrialError:
                state = None  # see below
            except BaseException as e:
                state, error = TrialState.FAIL, e
                try:
                    trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                except optuna.exceptions.UpdateFinishedTrialError:
                    state, error = None, None
        if state is None or _finished(study, trial._trial_id):
            # this worker was paused (SIGSTOP, a suspended laptop) past the grace period:
            # another worker failed the trial as stale and re-queued its params
            log.warning(
                "trial %d was failed as stale while this worker was paused; its retry is "
                "queued, this worker's result is dropped",
                trial.number,
            )
            continue
        frozen = study.tell(trial, values, state=state, skip_if_finished=True)
        counts[state] += 1
        log.info("trial %d %s %s", frozen.number, state.name, values or "")
        if callback is not None:
            callback(study, frozen)
        if error is not None and not isinstance(error, catch):
            raise error
    return WorkerReport(
        completed=counts[TrialState.COMPLETE],
        failed=counts[TrialState.FAIL],
        pruned=counts[TrialState.PRUNED],
        time_s=round(time.perf_counter() - started, 3),
    )
