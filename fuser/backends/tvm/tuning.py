"""MetaSchedule tuning with a persistent, shared, resumable database.

    fused = tb.fuse(tb.to_relax(graph), target)
    fused = tune(fused, target, "tuning_db", trials=512)   # tuned kernels applied
    executable = tb.build_fused(fused, target)

The database (``DIR/database_workload.json`` + ``database_tuning_record.json``,
MetaSchedule's JSON format) is keyed by each kernel's structure, so a kernel that
another run or another model already tuned is not tuned again. Records are appended
as they are measured: after an interruption, a rerun skips the kernels that have
their budget and tunes the rest.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuser.ir import FuserError

from .common import require_tvm


def open_database(db_dir: str | os.PathLike):
    """The JSON tuning database in ``db_dir`` (created when missing)."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    path = Path(db_dir)
    if path.exists() and not path.is_dir():
        raise FuserError(f"--tuning-db {path}: exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(path))


def build_candidate(mod, target, _params):
    """MetaSchedule's default candidate build, minus its ``import tvm.s_tir.tensor_intrin``.

    That import parses ~250 TVMScript intrinsics for every target and took 45-150 s per
    builder process here, longer than the builder's 30 s timeout, so every candidate
    failed as a timeout. A candidate is already scheduled (tensorized where it uses an
    intrinsic), so building it needs none of them registered.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def import_tensor_intrinsics() -> None:
    """``import tvm.s_tir.tensor_intrin`` (MetaSchedule's tune contexts do it), in ~7 s
    instead of ~45 s.

    TVMScript's ``prim_func`` calls ``inspect.stack()`` for each of its ~250 intrinsics,
    and ``inspect.getmodule`` scans all of ``sys.modules`` (thousands once torch is
    loaded) for every ``<frozen importlib...>`` frame of the import, because no module
    file has that name. Telling inspect's cache which module those frames belong to is
    true and ends the scans.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
        inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath(f"<frozen {name}>")), name)
    import tvm.s_tir.tensor_intrin  # noqa: F401


def _valid_records(database, task_mod) -> int:
    if not database.has_workload(task_mod):
        return 0
    return len(database.get_top_k(database.commit_workload(task_mod), 1 << 30))


@dataclass
class KernelBudget:
    """One kernel's share of a tuning run."""

    name: str
    records: int  # valid records the database already holds, from any run
    want: int  # trials this run's budget gives it

    @property
    def tuned(self) -> bool:
        # half the budget in valid records: some candidates always fail to build or run
        return self.want == 0 or 2 * self.records >= self.want


def _batch_callback(on_progress, names: list[str], total: int, stop: dict):
    """A MeasureCallback run after each measured batch (its records are in the database
    by then): it calls ``on_progress`` and stops the run when ``stop["signal"]`` is set.
    What it raises is kept in ``stop["raised"]``: TVM's FFI hands it back as a bare
    RuntimeError."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    done = [0]

    @derived_object
    class AfterBatch(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            done[0] += len(measure_candidates)
            try:
                if on_progress:
                    on_progress(done[0], total, names[task_id])
                if stop.get("signal"):
                    raise KeyboardInterrupt
            except BaseException as e:
                stop["raised"] = e
                raise

    return AfterBatch()


def _quiet_console() -> None:
    """Keep MetaSchedule's per-trial tables off the console (they still go to DIR/logs).
    Each of its logger setups gives its console handler the level of this logger, and
    leaves that logger at DEBUG, so it is set before each one."""
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)


def _search_strategy(per_task: int):
    """MetaSchedule's evolutionary search, scaled down for small budgets: its default
    (512 candidates, 4 generations) takes 25-75 s per kernel on 2 cores however few
    trials it then picks."""
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch

    if per_task >= 48:
        return EvolutionarySearch()
    return EvolutionarySearch(population_size=256 if per_task >= 16 else 128, genetic_num_iters=2)


@contextlib.contextmanager
def _ctrl_c_after_batch(stop: dict):
    """Ctrl-C sets a flag the batch callback acts on. Left to Python, the KeyboardInterrupt
    surfaces inside MetaSchedule, which ends the current kernel's tuning and goes on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("signal", True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def tune(
    fused,
    target,
    db_dir: str | os.PathLike,
    trials: int,
    on_plan: Callable[[list[KernelBudget]], None] | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
):
    """Tune the kernels of ``fused`` (from ``tb.fuse``) with ``trials``
    MetaSchedule trials in all, split evenly over its kernels; returns ``fused`` with
    the best records of the database applied.

    Kernels the database already holds (``KernelBudget.tuned``) are skipped; the rest
    are tuned round-robin in one MetaSchedule run, so each gets its share whatever
    its speed (a latency-weighted scheduler would leave slow-to-improve kernels short
    and have every rerun tune them again). ``on_plan(budgets)`` is called once before
    tuning, ``on_progress(trials_done, trials_total, kernel)`` after each measured batch.
    Ctrl-C stops the run after the batch being measured (KeyboardInterrupt).
    """
    require_tvm()
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name == "llvm" and "num-cores" not in target.attrs:
        raise FuserError("tuning an llvm target needs its thread count (num-cores)")
    database = open_database(db_dir)
    import_tensor_intrinsics()
    with target:
        tasks = ms.relax_integration.extract_tasks(fused, target)
    tasks = [t for t in tasks if not t.mod.attrs.get("tirx.is_scheduled", False)]
    per_task = max(math.ceil(trials / max(len(tasks), 1)), 1) if trials > 0 else 0
    budgets = [KernelBudget(t.task_name, _valid_records(database, t.dispatched[0]), per_task) for t in tasks]
    if on_plan:
        on_plan(budgets)
    pending = [t for t, b in zip(tasks, budgets) if not b.tuned]
    if pending:
        _quiet_console()
        logs = str(Path(db_dir) / "logs")
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            pending, logs, strategy=_search_strategy(per_task), num_threads="physical"
        )
        total = per_task * len(pending)
        stop: dict = {}
        callbacks = [
            *ms.measure_callback.MeasureCallback.create("default"),
            _batch_callback(on_progress, [t.task_name for t in pending], total, stop),
        ]
        _quiet_console()
        try:
            with _ctrl_c_after_batch(stop):
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=logs,
                    max_trials_global=total,
                    max_trials_per_task=per_task,
                    num_trials_per_iter=min(64, per_task),
                    database=database,
                    builder=ms.builder.LocalBuilder(f_build=build_candidate),
                    task_scheduler="round-robin",
                    measure_callbacks=callbacks,
                )
        except RuntimeError:
            if "raised" in stop:
                raise stop["raised"] from None
            raise
    with target, database:
        return relax.transform.MetaScheduleApplyDatabase()(fused)
