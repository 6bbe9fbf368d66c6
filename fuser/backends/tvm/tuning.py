"""MetaSchedule tuning with a persistent, shared, resumable database.

    fused = tb.fuse(tb.to_relax(graph), target)
    fused = tune(fused, target, "tuning_db", trials=512)   # tuned kernels applied
    executable = tb.build_fused(fused, target)

For llvm the search space is fuser's default schedule rules with their tile sizes
sampled (``schedules.design_space``), and each kernel's default schedule is measured and
committed to the database before the search: the search starts from it, and the build
never picks a schedule slower than it. ``runner`` may be MetaSchedule's RPC runner
(``rpc_runner``): the candidates are built here, one process per core, and timed on the
devices an RPC tracker hands out.

The database (``DIR/database_workload.json`` + ``database_tuning_record.json``,
MetaSchedule's JSON format) is keyed by each kernel's structure, so a kernel that
another run or another model already tuned is not tuned again. Records are appended
as they are measured: after an interruption, a rerun skips the kernels that have
their budget and tunes the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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
    """``import tvm.s_tir.tensor_intrin`` (MetaSchedule's tune contexts do it), in ~3 s
    instead of ~45 s.

    TVMScript's ``prim_func`` calls ``inspect.stack()`` for each of its ~250 intrinsics,
    and ``inspect.getmodule`` scans all of ``sys.modules`` (thousands once torch is
    loaded) for every ``<frozen importlib...>`` frame of the import, and for each
    expression TVMScript compiles as ``<ast>``, because no module file has that name.
    Telling inspect's cache which module those frames belong to (none, for ``<ast>``: the
    scan's own answer) is true and ends the scans.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for name in ("importlib._bootstrap", "importlib._bootstrap_external"):
        inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath(f"<frozen {name}>")), name)
    # TVMScript's evaluator compiles expressions as "<ast>": no module (the scan's answer too)
    inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath("<ast>")), "")
    import tvm.s_tir.tensor_intrin  # noqa: F401


def _valid_records(database, task_mod) -> int:
    if not database.has_workload(task_mod):
        return 0
    return len(database.get_top_k(database.commit_workload(task_mod), 1 << 30))


def split_trials(trials: int, kernels: int) -> list[int]:
    """``trials`` split over ``kernels`` as evenly as whole trials allow, the first
    kernels taking the remainder: [2, 2, 1] for 5 over 3; [1, 1, 0] for 2 over 3."""
    base, extra = divmod(max(trials, 0), max(kernels, 1))
    return [base + (i < extra) for i in range(kernels)]


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


@dataclass
class TuningResult:
    """What a tuning run did: the module with the database's best records applied, the
    per-kernel budgets, and the trials measured, by outcome."""

    mod: object
    budgets: list[KernelBudget]
    trials_run: int = 0
    build_errors: int = 0
    run_errors: int = 0
    first_error: str = ""
    failed_kernels: list[str] = field(default_factory=list)  # had trials, none of them valid
    seeded: int = 0  # default schedules measured and committed before the search

    @property
    def trials_requested(self) -> int:
        return sum(b.want for b in self.budgets if not b.tuned)


def describe_budgets(budgets: list[KernelBudget], db_dir) -> str:
    """'33 kernels, 2 already in DB; 20 trials for the rest: 20 kernels x 1, 11 left untuned'."""
    cached = sum(b.tuned and b.want > 0 for b in budgets)
    pending = [b.want for b in budgets if not b.tuned]
    shares = sorted(set(pending), reverse=True)
    split = ", ".join(f"{pending.count(w)} kernel{'s' * (pending.count(w) != 1)} x {w}" for w in shares)
    untuned = sum(b.want == 0 for b in budgets)
    return (
        f"{len(budgets)} kernels, {cached} already in {db_dir}; {sum(pending)} trials for the rest"
        + (f": {split}" if split else "")
        + (f"; {untuned} left untuned (fewer trials than kernels)" if untuned else "")
    )


def describe_result(result: TuningResult) -> str:
    """What a finished tuning run measured, e.g. 'tuning done: 20 of 20 trials'."""
    text = f"tuning done: {result.trials_run} of {result.trials_requested} trials"
    if result.trials_run < result.trials_requested:
        text += " (some kernels ran out of distinct candidates)"
    if result.seeded:
        text += f", after {result.seeded} default schedules measured as the starting point"
    if result.build_errors:
        text += f"; {result.build_errors} failed to build (first error: {result.first_error})"
    return text


def _first_line(msg: str) -> str:
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    # MetaSchedule's messages open with a generic line ("LocalRunner: An exception
    # occurred") and end with the cause
    return " / ".join(lines[:1] + lines[-1:]) if len(lines) > 1 else (lines[0] if lines else "?")


def _batch_callback(on_progress, names: list[str], total: int, stop: dict, result: TuningResult, counts):
    """A MeasureCallback run after each measured batch of the MetaSchedule run over the
    kernels ``names`` (its records are in the database by then): it counts the trials
    and their errors into ``result`` (per kernel in ``counts``, shared across runs), calls
    ``on_progress`` and stops the run when ``stop["signal"]`` is set. What it raises is
    kept in ``stop["raised"]``: TVM's FFI hands it back as a bare RuntimeError."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    measured, valid = counts.setdefault("measured", {}), counts.setdefault("valid", {})

    @derived_object
    class AfterBatch(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            try:
                result.trials_run += len(measure_candidates)
                name = names[task_id]
                measured[name] = measured.get(name, 0) + len(measure_candidates)
                valid.setdefault(name, 0)
                for built, ran in zip(builder_results, runner_results):
                    error = built.error_msg or ran.error_msg
                    if built.error_msg:
                        result.build_errors += 1
                    elif ran.error_msg:
                        result.run_errors += 1
                    else:
                        valid[name] += 1
                    if error and not result.first_error:
                        result.first_error = _first_line(error)
                result.failed_kernels = [n for n in measured if measured[n] and not valid[n]]
                if on_progress:
                    on_progress(result.trials_run, total, name)
                if stop.get("signal"):
                    raise KeyboardInterrupt
            except BaseException as e:
                stop["raised"] = e
                raise

    return AfterBatch()


def rpc_runner(tracker: str, key: str, timeout_s: int = 60):
    """MetaSchedule's RPC runner: candidates timed on the devices registered under ``key``
    with the RPC tracker at ``tracker`` (HOST:PORT), as many at once as it has."""
    require_tvm()
    from tvm.s_tir.meta_schedule.runner import RPCConfig, RPCRunner

    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        raise FuserError(f"--rpc-tracker {tracker}: give HOST:PORT, e.g. 127.0.0.1:9190")
    config = RPCConfig(
        tracker_host=host, tracker_port=int(port), tracker_key=key, session_timeout_sec=timeout_s
    )
    try:
        devices = _tracker_devices(host, int(port), key)
    except (OSError, RuntimeError) as e:
        raise FuserError(f"--rpc-tracker {tracker}: cannot reach the RPC tracker ({e})") from None
    if not devices:
        raise FuserError(f"--rpc-tracker {tracker}: no device registered under key {key!r}")
    return RPCRunner(config, evaluator_config=_evaluator(), max_workers=devices)


def _tracker_devices(host: str, port: int, key: str) -> int:
    """How many servers the tracker has under ``key`` (free or busy)."""
    import socket

    from tvm import rpc

    socket.create_connection((host, port), timeout=5).close()  # TVM's own client retries for 60 s
    summary = rpc.connect_tracker(host, port).summary()
    queue = summary.get("queue_info", {}).get(key, {})
    servers = [s for s in summary.get("server_info", []) if str(s.get("key", "")).endswith(key)]
    return max(len(servers), int(queue.get("free", 0)))


def _evaluator():
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

    return EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50)


def _space(target, schedules: bool):
    """fuser's rules as the search space (llvm), else MetaSchedule's own."""
    if not schedules or target.kind.name != "llvm":
        return "post-order-apply"
    from tvm.s_tir import meta_schedule as ms

    from .schedules import design_space

    return ms.space_generator.ScheduleFn(
        design_space(target), sch_rules=[], postprocs="llvm", mutator_probs="llvm"
    )


def _seed_defaults(tasks, target, database, builder, runner, result) -> None:
    """Measure each task's default schedule (its design space at the default decisions)
    with the tuning builder and runner, and commit it as a tuning record."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from .schedules import design_space

    space = design_space(target)
    scheduled = []
    for task in tasks:
        sch = s_tir.Schedule(task.dispatched[0])
        scheduled.append((task, space(sch)))
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in scheduled])
    inputs, ran = [], []
    for (task, sch), b in zip(scheduled, built):
        if b.error_msg:
            result.build_errors += 1
            result.first_error = result.first_error or _first_line(b.error_msg)
            continue
        args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
        inputs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", args))
        ran.append((task, sch, args))
    for (task, sch, args), future in zip(ran, runner.run(inputs)):
        r = future.result()
        if r.error_msg:
            result.run_errors += 1
            result.first_error = result.first_error or _first_line(r.error_msg)
            continue
        workload = database.commit_workload(task.dispatched[0])
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, r.run_secs, target, args))
        result.seeded += 1


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
    runner=None,
    schedules: bool = True,
) -> TuningResult:
    """Tune the kernels of ``fused`` (from ``tb.fuse``) with ``trials`` MetaSchedule
    trials in all, split over its kernels by ``split_trials``; returns a TuningResult
    whose ``mod`` is ``fused`` with the database's best records applied.

    Kernels the database already holds (``KernelBudget.tuned``) are skipped and keep
    their share unspent; the rest are tuned round-robin, each capped at its share, so
    a run measures at most the trials asked for (fewer when a kernel's search space
    runs out). ``on_plan(budgets)`` is called once before tuning,
    ``on_progress(trials_done, trials_total, kernel)`` after each measured batch.
    Ctrl-C stops the run after the batch being measured (KeyboardInterrupt).

    Raises a FuserError, naming the first error, when a trial failed to run (the
    generated code crashed, raised or timed out: timings from such a machine mean
    nothing) or a kernel's trials all failed; its records stay in the database.
    ``runner``: a MetaSchedule Runner (default: LocalRunner, a child process here;
    ``rpc_runner`` for a device farm). ``schedules`` (llvm): search fuser's rules' space,
    starting from each kernel's default schedule, measured first by the same runner
    (not counted in ``trials``); False: MetaSchedule's own space.
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
    if schedules and target.kind.name == "llvm":  # one-point spaces keep their default schedule
        from .schedules import tunable

        tasks = [t for t in tasks if tunable(t.dispatched[0]["main"], target)]
    budgets = [
        KernelBudget(t.task_name, _valid_records(database, t.dispatched[0]), want)
        for t, want in zip(tasks, split_trials(trials, len(tasks)))
    ]
    if on_plan:
        on_plan(budgets)
    result = TuningResult(fused, budgets)
    pending = [(t, b.want) for t, b in zip(tasks, budgets) if not b.tuned]
    if pending:
        _quiet_console()
        logs = str(Path(db_dir) / "logs")
        stop: dict = {}
        counts: dict = {}
        builder = ms.builder.LocalBuilder(f_build=build_candidate)
        runner = runner or ms.runner.LocalRunner(evaluator_config=_evaluator())
        space = _space(target, schedules)
        if not isinstance(space, str):
            unseeded = [t for t, b in zip(tasks, budgets) if not b.tuned and b.records == 0]
            _seed_defaults(unseeded, target, database, builder, runner, result)
            if result.run_errors:
                raise FuserError(
                    f"tuning failed: the default schedules of {result.run_errors} kernels failed to run "
                    f"(first error: {result.first_error})"
                )
        shared = {
            "database": database,
            "builder": builder,
            "runner": runner,
            "cost_model": ms.cost_model.CostModel.create("xgb", num_tuning_cores=_cores(target)),
            "task_scheduler": "round-robin",
        }
        try:
            with _ctrl_c_after_batch(stop):
                # one MetaSchedule run per share size: its per-task cap is then each
                # kernel's exact share
                for want in sorted({w for _, w in pending}, reverse=True):
                    batch = [t for t, w in pending if w == want]
                    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                        batch, logs, space=space, strategy=_search_strategy(want), num_threads="physical"
                    )
                    _quiet_console()
                    ms.tune.tune_tasks(
                        tasks=contexts,
                        task_weights=weights,
                        work_dir=logs,
                        max_trials_global=want * len(batch),
                        max_trials_per_task=want,
                        num_trials_per_iter=min(64, want),
                        measure_callbacks=[
                            *ms.measure_callback.MeasureCallback.create("default"),
                            _batch_callback(
                                on_progress,
                                [t.task_name for t in batch],
                                result.trials_requested,
                                stop,
                                result,
                                counts,
                            ),
                        ],
                        **shared,
                    )
        except RuntimeError:
            if "raised" in stop:
                raise stop["raised"] from None
            raise
        if result.run_errors or result.failed_kernels:
            raise FuserError(
                f"tuning failed: {result.run_errors + result.build_errors} of {result.trials_run} "
                f"trials failed ({result.run_errors} to run, {result.build_errors} to build"
                + (
                    f"; no valid trial for {', '.join(result.failed_kernels[:3])}"
                    if result.failed_kernels
                    else ""
                )
                + f"); first error: {result.first_error}; logs in {logs}"
            )
    with target, database:
        result.mod = relax.transform.MetaScheduleApplyDatabase()(fused)
    return result


def _cores(target) -> int:
    return int(target.attrs.get("num-cores", os.cpu_count() or 1))
