"""MetaSchedule tuning with a persistent, shared, resumable database.

    fused = tvm_backend.fuse(tvm_backend.to_relax(graph), target)
    fused = tune(fused, target, "tuning_db", trials=512)   # tuned kernels applied
    executable = tvm_backend.build_fused(fused, target)

The database (``DIR/database_workload.json`` + ``database_tuning_record.json``,
MetaSchedule's JSON format) is keyed by each kernel's structure, so a kernel that
another run or another model already tuned is not tuned again. Records are appended
as they are measured: after an interruption, a rerun skips the kernels that have
their budget and tunes the rest, each for what its budget still lacks.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

from fuser.ir import FuserError

from .tvm_backend import require_tvm


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


def _valid_records(database, task_mod, limit: int) -> int:
    if not database.has_workload(task_mod):
        return 0
    return len(database.get_top_k(database.commit_workload(task_mod), limit))


def tune(fused, target, db_dir: str | os.PathLike, trials: int,
         on_task: Callable[[int, int, str, int, int], None] | None = None):
    """Tune the kernels of ``fused`` (from ``tvm_backend.fuse``) with ``trials``
    MetaSchedule trials in all, split evenly over the kernels that still need them;
    returns ``fused`` with the best records of the database applied.

    ``on_task(index, count, name, trials_done_before, trials_wanted)`` is called before
    each kernel (for progress bars). A kernel counts as tuned once the database holds
    half its budget in valid records (some candidates always fail to build or run).
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
    for index, task in enumerate(tasks):
        have = _valid_records(database, task.dispatched[0], per_task) if per_task else 0
        if on_task:
            on_task(index, len(tasks), task.task_name, have, per_task)
        if per_task == 0 or have * 2 >= per_task:
            continue  # tuned by an earlier run (of this or another model)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [task], str(Path(db_dir) / "logs"), num_threads="physical")
        ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(Path(db_dir) / "logs"),
                           max_trials_global=per_task - have,
                           num_trials_per_iter=min(64, per_task - have), database=database,
                           builder=ms.builder.LocalBuilder(f_build=build_candidate))
    with target, database:
        return relax.transform.MetaScheduleApplyDatabase()(fused)
