"""The `/status` document: everything the cache knows, for people and scripts; secrets never enter it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.probes import Probe
from agent.process.monitor import AppMonitor
from agent.process.tree import Member
from agent.runtime.health import CheckState, Health
from agent.units import format_time


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_time(epoch)


def check_document(state: CheckState, now: float, slack: float = 0.0) -> dict[str, Any]:
    passing, reason = state.verdict(now, slack)
    label = "stale" if reason.startswith("stale") else {True: "passing", False: "failing", None: "unknown"}[passing]
    last = state.last
    return {
        "type": state.spec.type,
        "probes": list(state.spec.probes),
        "state": label,
        "reason": reason,
        "consecutive_successes": state.successes,
        "consecutive_failures": state.failures,
        "transitions": state.transitions,
        "last_transition": iso(state.last_transition),
        "last_result": None if last is None else {
            "result": last.outcome.value,
            "message": last.message,
            "duration_seconds": round(last.duration, 6),
            "time": iso(last.wall),
            "age_seconds": round(now - last.at, 3),
        },
    }


def member_document(member: Member) -> dict[str, Any]:
    return {"pid": member.pid, "name": member.name, "start_time": iso(member.started)}


def app_document(app: AppMonitor | None, tree: Sequence[Member] = ()) -> dict[str, Any] | None:
    if app is None:
        return None
    sample = app.sample
    out: dict[str, Any] = {"match": app.description, "found": sample is not None, "restarts": app.restarts}
    if app.error:
        out["error"] = app.error
    target = app.target
    out["target"] = None if target is None else {**member_document(target), "reason": app.reason}
    out["tree"] = [member_document(m) for m in tree] if sample is not None else []
    if sample is not None:
        out.update(pid=sample.pid, name=sample.name, status=sample.status, start_time=iso(sample.create_time),
                   resident_memory_bytes=sample.rss, threads=sample.threads, open_fds=sample.fds,
                   cpu_seconds=round(sample.cpu_seconds, 3))
    return out


def status_document(health: Health, app: AppMonitor | None, now: float, *, started_wall: float,
                    tree: Sequence[Member] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole `/status` answer at monotonic time `now`."""
    return {
        "version": __version__,
        "phase": health.lifecycle.phase.value,
        "started": iso(started_wall),
        "uptime_seconds": round(now - health.started_at, 3),
        "startup_passed": health.startup_done,
        "admin_drained": health.admin_drained,
        "probes": {p.value: health.answer(p, now).status == 200 for p in Probe},
        "checks": {name: check_document(state, now, health.slack()) for name, state in health.states.items()},
        "app": app_document(app, tree),
        **(extra or {}),
    }
