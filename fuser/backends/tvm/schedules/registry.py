"""The rule registry: the first rule whose pattern matches a kernel schedules it.

A rule is a module with ``NAME``, ``TUNABLE`` and ``apply(sch, target, tunable) -> bool |
Schedule | None`` (dlight's convention: a falsy result means "not mine"; a rule may also
return a new Schedule). Rules are tried in ``RULES`` order on a fresh ``tir.Schedule`` of
the kernel; one that raises is treated as not matching (the next rule gets a fresh
schedule). A kernel no rule takes stays as legalized: its source is ``naive``.

With ``tunable=True`` the tunable rules sample their tile sizes around the defaults:
``design_space(target)`` is that, as a MetaSchedule space function.
"""

from __future__ import annotations

import logging

from ..common import tvm
from . import fallback, injective, matmul, reduction, rows, window

RULES = (window, matmul, injective, rows, reduction, fallback)
SOURCE_ATTR = "fuser.schedule"  # PrimFunc attribute: the rule that scheduled it
NAIVE = "naive"
TUNED = "tuned"
log = logging.getLogger(__name__)


def _try(rule, func, target, tunable: bool):
    """The scheduled PrimFunc, or None when ``rule`` does not take ``func``."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        result = rule.apply(sch, target, tunable)
    except Exception as e:  # TVM reports a schedule that does not fit in several error types
        log.debug("rule %s: %s", rule.NAME, str(e).strip().splitlines()[-1:])
        return None
    if isinstance(result, s_tir.Schedule):
        return result.mod["main"]
    return sch.mod["main"] if result else None


def schedule_func(func, target) -> tuple:
    """(scheduled PrimFunc, rule name), or (None, NAIVE) when no rule takes ``func``."""
    for rule in RULES:
        scheduled = _try(rule, func, target, False)
        if scheduled is not None:
            return scheduled, rule.NAME
    return None, NAIVE


def tunable(func, target) -> bool:
    """Whether the rule that takes ``func`` samples its tiles (else its space is one point
    and tuning the kernel can only measure its default)."""
    _, name = schedule_func(func, target)
    return any(name == rule.NAME and rule.TUNABLE for rule in RULES)


def is_scheduled(func) -> bool:
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def apply_default_schedules(mod, target):
    """``mod`` with every PrimFunc nobody scheduled yet (tuning, depth-first) scheduled by
    the first matching rule; each gets ``SOURCE_ATTR`` = the rule's name."""
    funcs = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and not is_scheduled(func):
            scheduled, name = schedule_func(func, target)
            func = (scheduled if scheduled is not None else func).with_attr(SOURCE_ATTR, name)
            if scheduled is not None:
                func = func.with_attr("tirx.is_scheduled", True)
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def schedule_sources(mod) -> dict[str, str]:
    """Kernel -> where its schedule came from: a rule's name, ``tuned`` (a tuning record),
    ``depth-first`` (fuser's depth-first schedules), or ``naive`` (as legalized)."""
    sources = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        attrs = func.attrs or {}
        if SOURCE_ATTR in attrs:
            sources[gv.name_hint] = str(attrs[SOURCE_ATTR])
        elif "fuser.depth_first" in attrs:
            sources[gv.name_hint] = "depth-first"
        elif is_scheduled(func):
            sources[gv.name_hint] = TUNED
        else:
            sources[gv.name_hint] = NAIVE
    return sources


def design_space(target):
    """MetaSchedule space function: the first tunable-or-not rule that takes the kernel,
    its tiles sampled around the defaults (untunable rules give a one-point space)."""
    from tvm import s_tir

    def space(sch):
        for rule in RULES:
            # try on a copy: a rule that fails halfway must not leave its steps in the trace
            trial = sch.copy()
            try:
                result = rule.apply(trial, target, rule.TUNABLE)
            except Exception:  # as in _try
                continue
            if isinstance(result, s_tir.Schedule):
                return result
            if result:
                return trial
        return sch

    return space
