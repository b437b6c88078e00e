"""The pure core: kubelet thresholds, staleness and probe aggregation, on a fake clock."""

from agent.config import load
from agent.runtime.health import MAX_BODY, Health, Outcome, Result
from agent.runtime.phases import Phase
from agent.testing import FakeClock

CONFIG = """
checks:
  web: {type: tcp, address: '127.0.0.1:1', probes: [liveness, startup], interval: 10s, timeout: 1s}
  db: {type: tcp, address: 'db:5432', probes: [readiness], failure_threshold: 3, success_threshold: 2}
  cache: {type: tcp, address: 'cache:6379', probes: [readiness], failure_threshold: 1}
  info: {type: tcp, address: 'x:1', probes: []}
"""


def make(config: str = CONFIG) -> tuple[Health, FakeClock]:
    clock = FakeClock()
    return Health(load(config, {}).checks, clock), clock


def ok(clock: FakeClock, message: str = "fine") -> Result:
    return Result(Outcome.SUCCESS, message, 0.001, clock(), 0.0)


def bad(clock: FakeClock, message: str = "connection refused", outcome: Outcome = Outcome.FAILURE) -> Result:
    return Result(outcome, message, 0.001, clock(), 0.0)


def start(health: Health, clock: FakeClock) -> None:
    for name in ("web", "cache"):
        health.record(name, ok(clock))
    health.record("db", ok(clock))
    health.record("db", ok(clock))
    assert health.latch_startup(clock())
    health.lifecycle.transition(Phase.RUNNING, "test")


def test_a_check_fails_only_after_failure_threshold_failures_in_a_row() -> None:
    health, clock = make()
    start(health, clock)
    assert [health.record("db", bad(clock)) for _ in range(3)] == [False, False, True]
    assert health.states["db"].passing is False


def test_a_success_between_failures_resets_the_count() -> None:
    health, clock = make()
    start(health, clock)
    for result in (bad(clock), bad(clock), ok(clock), bad(clock), bad(clock)):
        health.record("db", result)
    assert health.states["db"].passing is True


def test_recovery_needs_success_threshold_successes_in_a_row() -> None:
    health, clock = make()
    start(health, clock)
    for _ in range(3):
        health.record("db", bad(clock))
    assert health.record("db", ok(clock)) is False
    assert health.answer("readiness", clock()).status == 503
    assert health.record("db", ok(clock)) is True
    assert health.answer("readiness", clock()).status == 200


def test_timeouts_and_errors_count_as_failures() -> None:
    health, clock = make()
    start(health, clock)
    health.record("cache", bad(clock, "timed out after 1s", Outcome.TIMEOUT))
    assert health.states["cache"].passing is False
    health.record("cache", ok(clock))
    health.record("cache", bad(clock, "ValueError: boom", Outcome.ERROR))
    assert health.evaluate("readiness", clock()).body == "[-]cache failed: ValueError: boom\nreadyz check failed\n"


def test_a_result_older_than_two_intervals_and_a_timeout_is_stale() -> None:
    health, clock = make()
    start(health, clock)
    clock.advance(21.0)
    assert health.answer("readiness", clock()).status == 200
    clock.advance(0.01)
    answer = health.answer("readiness", clock())
    assert answer.status == 503 and "[-]web" not in answer.body and "stale: last result is" in answer.body


def test_a_check_that_never_ran_goes_stale_after_its_initial_delay() -> None:
    health, clock = make("checks: {slow: {type: tcp, address: 'db:1', initial_delay: 30s, interval: 5s, timeout: 1s}}")
    assert health.states["slow"].verdict(clock())[0] is None
    clock.advance(30 + 11 + 0.1)
    assert health.states["slow"].verdict(clock()) == (False, "stale: last result is no result yet")


def test_liveness_answers_ok_until_startup_has_passed() -> None:
    health, clock = make()
    health.record("web", bad(clock))
    health.record("web", bad(clock))
    health.record("web", bad(clock))
    answer = health.evaluate("liveness", clock(), verbose=True)
    assert answer.status == 200
    assert answer.body.endswith("livez check passed (startup has not passed yet: liveness holds until it does)\n")


def test_startup_latches_once_every_startup_check_has_passed() -> None:
    health, clock = make()
    assert health.answer("startup", clock()).status == 503
    health.record("web", ok(clock))
    assert health.latch_startup(clock())
    for _ in range(3):
        health.record("web", bad(clock))
    assert health.answer("startup", clock()).status == 200
    assert health.answer("liveness", clock()).status == 503


def test_readiness_waits_for_startup() -> None:
    health, clock = make()
    health.record("db", ok(clock))
    health.record("db", ok(clock))
    health.record("cache", ok(clock))
    answer = health.answer("readiness", clock())
    assert answer == answer.__class__(503, "[-]startup failed: startup checks have not all passed yet\nreadyz check failed\n")


def test_unknown_checks_pass_liveness_and_fail_readiness_like_the_kubelets_initial_results() -> None:
    health, clock = make()
    health.record("web", ok(clock))
    health.latch_startup(clock())
    health.lifecycle.transition(Phase.RUNNING, "test")
    assert health.answer("liveness", clock()).status == 200
    body = health.answer("readiness", clock()).body
    assert "[-]db failed: no result yet" in body and "[-]cache failed: no result yet" in body


def test_readiness_fails_at_once_when_draining_but_liveness_does_not() -> None:
    health, clock = make()
    start(health, clock)
    health.answer("readiness", clock())
    health.lifecycle.transition(Phase.DRAINING, "test")
    assert health.answer("readiness", clock()).body == "[-]shutdown failed: agent is draining\nreadyz check failed\n"
    assert health.answer("liveness", clock()).status == 200


def test_an_admin_drain_fails_readiness_until_undone() -> None:
    health, clock = make()
    start(health, clock)
    health.set_admin_drained(True)
    assert health.answer("readiness", clock()).status == 503
    health.set_admin_drained(False)
    assert health.answer("readiness", clock()).status == 200


def test_verbose_lists_every_check_of_the_probe() -> None:
    health, clock = make()
    start(health, clock)
    health.record("cache", bad(clock))
    assert health.evaluate("readiness", clock(), verbose=True).body == (
        "[+]db ok\n[-]cache failed: connection refused\nreadyz check failed\n")


def test_exclude_leaves_a_check_out_and_warns_about_unknown_names() -> None:
    health, clock = make()
    start(health, clock)
    health.record("cache", bad(clock))
    answer = health.evaluate("readiness", clock(), exclude=["cache", "nope"])
    assert answer.status == 200
    assert health.evaluate("readiness", clock(), verbose=True, exclude=["cache", "nope"]).body == (
        "[+]db ok\nwarn: some checks cannot be excluded: no matches for nope\nreadyz check passed\n")


def test_one_check_can_be_asked_for_and_unknown_names_are_none() -> None:
    health, clock = make()
    start(health, clock)
    health.record("cache", bad(clock))
    assert health.evaluate_one("readiness", "db", clock()).status == 200
    assert health.evaluate_one("readiness", "cache", clock()).status == 503
    assert health.evaluate_one("readiness", "web", clock()) is None
    assert health.evaluate_one("readiness", "../../etc", clock()) is None


def test_checks_with_no_probes_feed_no_probe() -> None:
    health, clock = make()
    start(health, clock)
    for _ in range(3):
        health.record("info", bad(clock))
    assert all(health.answer(p, clock()).status == 200 for p in ("liveness", "readiness", "startup"))


def test_bodies_stay_under_what_the_kubelet_reads() -> None:
    checks = "\n".join(f"  c{i}: {{type: tcp, address: 'db:1', failure_threshold: 1}}" for i in range(300))
    health, clock = make("checks:\n" + checks)
    for i in range(300):
        health.record(f"c{i}", bad(clock, "x" * 500))
    answer = health.evaluate("readiness", clock(), verbose=True)
    assert len(answer.body.encode()) <= MAX_BODY
    assert "more lines cut" in answer.body and answer.body.endswith("readyz check failed\n")


def test_cached_answers_change_when_results_change() -> None:
    health, clock = make()
    start(health, clock)
    assert health.answer("readiness", clock()).status == 200
    health.record("cache", bad(clock))
    assert health.answer("readiness", clock()).status == 503


def test_no_startup_checks_means_startup_passes_at_once() -> None:
    health, clock = make("checks: {db: {type: tcp, address: 'db:1'}}")
    assert health.latch_startup(clock())


def test_the_first_round_is_done_when_every_check_has_a_result_or_is_still_delayed() -> None:
    health, clock = make("checks: {a: {type: tcp, address: 'db:1'}, b: {type: tcp, address: 'db:1', initial_delay: 5s}}")
    assert not health.first_round_done(clock())
    health.record("a", ok(clock))
    assert health.first_round_done(clock())
    clock.advance(6)
    assert not health.first_round_done(clock())
