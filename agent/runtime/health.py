"""The pure core: check states with kubelet-style thresholds, staleness, and probe answers.

Nothing here does I/O or reads the clock by itself; the engine records results and
the server asks for answers, both passing the current monotonic time.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agent.config import CheckSpec
from agent.probes import Probe, named
from agent.runtime.phases import Lifecycle, Phase
from agent.units import format_duration, one_line

MAX_BODY = 10 * 1024  # the kubelet reads at most 10 KiB of a probe's body
MAX_REASON = 300


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class Result:
    """One run of a check: what happened, why, how long it took, and when it ended."""

    outcome: Outcome
    message: str
    duration: float
    at: float  # monotonic
    wall: float  # epoch seconds, for people

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.SUCCESS


@dataclass
class CheckState:
    """The kubelet's probe-worker rule: the state flips only after a threshold of identical results."""

    spec: CheckSpec[object]
    started_at: float
    passing: bool | None = None  # None until a threshold has first been met
    last: Result | None = None
    successes: int = 0
    failures: int = 0
    transitions: int = 0
    last_transition: float | None = None  # epoch seconds

    def record(self, result: Result) -> bool:
        """Apply one result; True when the state changed."""
        self.last = result
        if result.ok:
            self.successes, self.failures = self.successes + 1, 0
            flip = self.passing is not True and self.successes >= self.spec.success_threshold
        else:
            self.successes, self.failures = 0, self.failures + 1
            flip = self.passing is not False and self.failures >= self.spec.failure_threshold
        if flip:
            self.passing = result.ok
            self.transitions += 1
            self.last_transition = result.wall
        return flip

    def fresh_until(self) -> float:
        """The monotonic time after which the latest result (or its absence) counts as stale."""
        base = self.last.at if self.last else self.started_at + self.spec.initial_delay
        return base + self.spec.stale_after

    def verdict(self, now: float, slack: float = 0.0) -> tuple[bool | None, str]:
        """(passing, reason): True, False, or None while no threshold has been met yet.

        `slack` is time the agent itself lost (a paused or starved event loop): a result is not
        stale because the agent could not run its poller.
        """
        if now > self.fresh_until() + slack:
            age = f"{format_duration(round(now - self.last.at, 1))} old" if self.last else "no result yet"
            return False, f"stale: last result is {age}"
        if self.passing is None:
            if self.last is None:
                return None, "no result yet"
            count = self.failures if not self.last.ok else self.successes
            need = self.spec.failure_threshold if not self.last.ok else self.spec.success_threshold
            return None, f"pending ({count}/{need}): {self.last.message}"
        if self.passing:
            if self.last is not None and not self.last.ok:
                return True, f"ok ({self.failures}/{self.spec.failure_threshold} failures: {self.last.message})"
            return True, "ok"
        return False, self.last.message if self.last else "failing"


@dataclass(frozen=True)
class Answer:
    """A probe's status code and body."""

    status: int
    body: str

    @functools.cached_property
    def data(self) -> bytes:
        """The body encoded once, since a cached answer is sent many times."""
        return self.body.encode()


@dataclass
class _Cached:
    answer: Answer
    valid_until: float


@dataclass
class Health:
    """Every check's state, the startup latch, the manual drain flag and the lifecycle."""

    specs: Sequence[CheckSpec[object]]
    clock: Callable[[], float]
    on_phase: Callable[[Phase, Phase, str], None] | None = None
    slack: Callable[[], float] = lambda: 0.0  # time the agent's own loop lost lately (the watchdog's lag)
    states: dict[str, CheckState] = field(init=False)
    startup_done: bool = False
    admin_drained: bool = False
    _cache: dict[str, _Cached] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.started_at = self.clock()
        self.lifecycle = Lifecycle(self.clock, self._phase_changed)
        self.states = {s.name: CheckState(s, self.started_at) for s in self.specs}
        self.members: dict[str, list[str]] = {p: [s.name for s in self.specs if p in s.probes] for p in Probe}

    def record(self, name: str, result: Result) -> bool:
        """Apply a check's result; True when the check's state flipped."""
        state = self.states[name]
        before = state.verdict(result.at)
        flipped = state.record(result)
        # Most results repeat the last one (ok stays ok, the same failure again): the answers built
        # from the cache are then unchanged, so keep them rather than rebuild them for every result.
        if flipped or state.verdict(result.at) != before:
            self.invalidate()
        return flipped

    def apply(self, specs: Sequence[CheckSpec[object]]) -> None:
        """Swap in a reloaded set of checks; an unchanged check keeps its state, a changed one starts afresh."""
        now = self.clock()
        self.specs = specs
        self.states = {s.name: (self.states[s.name] if s.name in self.states and self.states[s.name].spec == s
                                else CheckState(s, now)) for s in specs}
        self.members = {p: [s.name for s in specs if p in s.probes] for p in Probe}
        self.invalidate()

    def _phase_changed(self, before: Phase, after: Phase, reason: str) -> None:
        self.invalidate()
        if self.on_phase is not None:
            self.on_phase(before, after, reason)

    def invalidate(self) -> None:
        """Forget cached answers after anything they depend on changed."""
        self._cache.clear()

    def startup_passing(self, now: float) -> bool:
        """Whether every startup check passes now (before the latch is set)."""
        slack = self.slack()
        return all(self.states[n].verdict(now, slack)[0] is True for n in self.members[Probe.STARTUP])

    def latch_startup(self, now: float) -> bool:
        """Set the startup latch once every startup check has passed; True when it was set just now."""
        if self.startup_done or not self.startup_passing(now):
            return False
        self.startup_done = True
        self.invalidate()
        return True

    def set_admin_drained(self, drained: bool) -> None:
        self.admin_drained = drained
        self.invalidate()

    def first_round_done(self, now: float) -> bool:
        """Every check has a result, or is still inside its initial delay."""
        return all(s.last is not None or now < s.started_at + s.spec.initial_delay for s in self.states.values())

    def answer(self, probe: str, now: float) -> Answer:
        """The plain answer to a probe, cached until a result, the phase or staleness changes it."""
        cached = self._cache.get(probe)
        if cached is not None and now <= cached.valid_until:
            return cached.answer
        answer = self.evaluate(probe, now)
        members = self.members[probe]
        valid_until = min((self.states[n].fresh_until() for n in members), default=float("inf"))
        self._cache[probe] = _Cached(answer, valid_until)
        return answer

    def evaluate(self, probe: str, now: float, *, verbose: bool = False, exclude: Iterable[str] = ()) -> Answer:
        """Compute a probe's answer in the kube-apiserver format (`[+]name ok`, `[-]name failed: reason`)."""
        kind, excluded = named(probe), set(exclude)
        slack = self.slack()
        lines: list[tuple[bool, str]] = []
        for name in self.members[probe]:
            if name in excluded:
                continue
            passing, reason = self.states[name].verdict(now, slack)
            ok = kind.initial if passing is None else passing
            lines.append((ok, f"[+]{name} ok" if ok and reason == "ok" else
                          f"[{'+' if ok else '-'}]{name} {'ok' if ok else 'failed'}: {one_line(reason, MAX_REASON)}"))
        ok = all(line_ok for line_ok, _ in lines)
        note = ""
        if kind is Probe.LIVENESS and not self.startup_done:
            ok, note = True, " (startup has not passed yet: liveness holds until it does)"
        elif kind is Probe.STARTUP and self.startup_done:
            ok, note = True, " (latched)"
            lines = [(True, text) for _, text in lines]
        elif kind is Probe.READINESS:
            if self.lifecycle.is_shutting_down():
                ok = False
                lines.insert(0, (False, f"[-]shutdown failed: agent is {self.lifecycle.phase.value}"))
            elif not self.startup_done or self.lifecycle.phase is not Phase.RUNNING:
                ok = False
                lines.insert(0, (False, "[-]startup failed: startup checks have not all passed yet"))
            if self.admin_drained:
                ok = False
                lines.insert(0, (False, "[-]admin-drain failed: drained by /admin/drain"))
        unknown = sorted(excluded - set(self.members[probe]))
        if ok and not verbose:
            return Answer(200, "ok\n")
        shown = [text for line_ok, text in lines if verbose or not line_ok]
        if unknown:
            shown.append(f"warn: some checks cannot be excluded: no matches for {', '.join(unknown)}")
        shown.append(f"{kind.path} check {'passed' if ok else 'failed'}{note}")
        return Answer(200 if ok else 503, _fit("\n".join(shown) + "\n"))

    def evaluate_one(self, probe: str, name: str, now: float) -> Answer | None:
        """The answer for one check of a probe (`/readyz/NAME`); None when the probe has no such check."""
        if name not in self.members[probe]:
            return None
        passing, reason = self.states[name].verdict(now, self.slack())
        kind = named(probe)
        ok = kind.initial if passing is None else passing
        if ok:
            return Answer(200, "ok\n")
        return Answer(503, f"[-]{name} failed: {one_line(reason, MAX_REASON)}\n{kind.path} check failed\n")


def _fit(body: str) -> str:
    """Keep a body under the 10 KiB the kubelet reads, saying how much was cut."""
    if len(body.encode()) <= MAX_BODY:
        return body
    lines, kept, size = body.splitlines(), [], 0
    for index, line in enumerate(lines):
        if size + len(line.encode()) + 1 > MAX_BODY - 64:
            kept.append(f"... {len(lines) - index - 1} more lines cut")
            kept.append(lines[-1])
            break
        kept.append(line)
        size += len(line.encode()) + 1
    return "\n".join(kept) + "\n"
