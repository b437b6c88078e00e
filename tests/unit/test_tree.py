"""The app's tree and the signal guards: never pid 0, -1, 1, the agent's own group, or a reused pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from agent.process.tree import (
    Member,
    group_is_foreign,
    group_members,
    is_launcher,
    leftover_message,
    member,
    refusal,
    signal_each,
    signal_group,
    signal_member,
    tree_of,
)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A real process in its own session, so its group is not the test's."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every os.kill and os.killpg call, recorded and still made (so a broken guard shows as a call)."""
    calls: list[tuple[str, int, int]] = []
    real_kill, real_killpg = os.kill, os.killpg

    def kill(pid: int, signum: int) -> None:
        calls.append(("kill", pid, signum))
        if pid > 1:
            real_kill(pid, signum)

    def killpg(pgid: int, signum: int) -> None:
        calls.append(("killpg", pgid, signum))
        if pgid > 1 and pgid != os.getpgrp():
            real_killpg(pgid, signum)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "killpg", killpg)
    return calls


def me() -> Member:
    found = member(psutil.Process())
    assert found is not None
    return found


@pytest.mark.parametrize("pid", [0, -1, 1])
def test_pid_0_minus_1_and_init_are_never_signalled(pid: int, sent: list[tuple[str, int, int]]) -> None:
    started = psutil.Process(1).create_time() if pid == 1 else 0.0
    assert refusal(pid) is not None
    assert signal_member(Member(pid, "x", started), signal.SIGUSR1) is False
    assert signal_group(pid, signal.SIGUSR1, [me()]) is False
    assert sent == []


def test_the_agents_own_group_and_itself_are_never_signalled(sent: list[tuple[str, int, int]]) -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        assert signal_group(os.getpgrp(), signal.SIGUSR1, [me()]) is False
        assert signal_member(me(), signal.SIGUSR1) is False
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sent == [] and got == []
    assert refusal(os.getpgrp()) in ("the agent's own process group", "the agent itself")


def test_a_pid_whose_start_time_changed_is_not_signalled(sleeper: subprocess.Popen[bytes],
                                                         sent: list[tuple[str, int, int]]) -> None:
    real = member(psutil.Process(sleeper.pid))
    assert real is not None
    reused = Member(real.pid, real.name, real.started - 5.0)  # as if the recorded process had exited and the pid been reused
    assert reused.running() is False
    assert signal_member(reused, signal.SIGTERM) is False
    assert signal_group(sleeper.pid, signal.SIGTERM, [reused]) is False
    assert signal_each([reused], signal.SIGTERM) == []
    assert sent == [] and sleeper.poll() is None


def test_the_recorded_process_and_its_group_are_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    real = member(psutil.Process(sleeper.pid))
    assert real is not None and real.running()
    assert signal_group(sleeper.pid, signal.SIGTERM, [real]) is True
    assert sleeper.wait(10) == -signal.SIGTERM
    assert real.running() is False
    assert signal_member(real, signal.SIGTERM) is False  # gone: nothing is sent


def test_the_tree_holds_the_root_and_every_descendant() -> None:
    shell = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60; true"], start_new_session=True)
    try:
        root = psutil.Process(shell.pid)
        deadline = time.monotonic() + 10
        while [m.name for m in tree_of(root)[1:]] != ["sleep", "sleep"]:  # each forked shell has exec'd sleep
            assert time.monotonic() < deadline, tree_of(root)
            time.sleep(0.02)
        tree = tree_of(root)
        assert tree[0].pid == shell.pid and {m.name for m in tree[1:]} == {"sleep"}
        assert is_launcher(root) and not is_launcher(psutil.Process(tree[1].pid))
        assert {m.pid for m in group_members(shell.pid)} == {m.pid for m in tree}
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()


def test_a_group_is_foreign_only_when_no_member_shares_the_agents_mount_namespace() -> None:
    members = [Member(10, "sh", 1.0), Member(11, "python", 2.0)]
    spaces = {"self": "mnt:[1]", 10: "mnt:[2]", 11: "mnt:[2]"}
    assert group_is_foreign(members, namespace=spaces.get) is True
    assert group_is_foreign(members, namespace={**spaces, 11: "mnt:[1]"}.get) is False
    assert group_is_foreign(members, namespace={**spaces, "self": None}.get) is None
    assert group_is_foreign([], namespace=spaces.get) is None


def test_a_member_whose_namespace_cannot_be_read_makes_it_unknown(sleeper: subprocess.Popen[bytes]) -> None:
    real = member(psutil.Process(sleeper.pid))
    assert real is not None
    spaces = {"self": "mnt:[1]", 10: "mnt:[2]"}
    assert group_is_foreign([Member(10, "sh", 1.0), real], namespace=spaces.get) is None


def test_real_groups_of_this_container_are_not_foreign(sleeper: subprocess.Popen[bytes]) -> None:
    assert group_is_foreign(group_members(sleeper.pid)) is False
    outside = subprocess.Popen(["unshare", "--mount", "sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(outside.pid).name() != "sleep":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert group_is_foreign(group_members(outside.pid)) is True
    finally:
        outside.kill()
        outside.wait()


def test_the_leftover_message_names_what_still_runs() -> None:
    shell, python = Member(10, "sh", 1.0), Member(12, "python", 2.0)
    assert leftover_message(shell, [python]) == "the app's shell pid 10 (sh) exited but pid 12 (python) still runs"
    assert leftover_message(python, [python]) == "pid 12 (python) still runs"
    assert leftover_message(None, [shell, python]) == "pid 10 (sh), pid 12 (python) still run"
