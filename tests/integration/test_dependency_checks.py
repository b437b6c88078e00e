"""redis and postgres checks against real servers: the machine's own, and throwaway ones killed, paused, restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from agent.config import ConfigError, load
from agent.testing import AgentProcess, run_agent
from tests.servers import Certs, Target, postgres_cluster, redis_server


def one_check(body: str, **common: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in common.items())
    return f"checks: {{dep: {{{body}, interval: 100ms, timeout: 500ms, failure_threshold: 1{extra}}}}}\n"


def message(agent: AgentProcess) -> str:
    last = agent.status()["checks"]["dep"]["last_result"]
    return str(last["message"]) if last else ""


def no_secret(agent: AgentProcess, secret: str) -> None:
    for text in ("\n".join(agent.logs()), agent.get("/status")[1], agent.get("/readyz?verbose")[1], agent.get("/metrics")[1]):
        assert secret not in text


# --- redis ------------------------------------------------------------------------------------------


def test_redis_on_this_machine_answers_pong() -> None:
    with run_agent(one_check("type: redis, url: 'redis://127.0.0.1:6379/0'")) as agent:
        agent.wait_status("/readyz", 200)
        assert message(agent) == "PONG"


def test_redis_killed_is_refused_and_restarted_passes_again() -> None:
    with redis_server() as server, run_agent(one_check(f"type: redis, url: 'redis://127.0.0.1:{server.port}'")) as agent:
        agent.wait_status("/readyz", 200)
        server.kill()
        agent.wait_status("/readyz", 503, f"[-]dep failed: connection refused by redis://127.0.0.1:{server.port}")
        server.start()
        agent.wait_status("/readyz", 200)


def test_redis_paused_with_sigstop_times_out_and_recovers_on_sigcont() -> None:
    with redis_server() as server, run_agent(one_check(f"type: redis, url: 'redis://127.0.0.1:{server.port}'")) as agent:
        agent.wait_status("/readyz", 200)
        server.pause()
        agent.wait_status("/readyz", 503, "timed out after 500ms")
        server.resume()
        agent.wait_status("/readyz", 200)


def test_redis_with_a_wrong_password_fails_authentication_and_never_shows_it() -> None:
    with redis_server(password="s3rver-pass") as server:
        url = f"redis://:wr0ng-pass@127.0.0.1:{server.port}"
        with run_agent(one_check(f"type: redis, url: '{url}'")) as agent:
            agent.wait_status("/readyz", 503, "authentication failed at redis://:<redacted>@127.0.0.1")
            no_secret(agent, "wr0ng-pass")
        with run_agent(one_check(f"type: redis, url: 'redis://:s3rver-pass@127.0.0.1:{server.port}/2'")) as agent:
            agent.wait_status("/readyz", 200)
            no_secret(agent, "s3rver-pass")


def test_redis_acl_user_and_password_from_the_environment() -> None:
    with redis_server(password="admin-pass") as server:
        server.cli("ACL", "SETUSER", "checker", "on", ">checker-pass", "+ping")
        config = one_check("type: redis, url: 'redis://checker:${REDIS_PASS}@127.0.0.1:" + str(server.port) + "'")
        with run_agent(config, env={"REDIS_PASS": "checker-pass"}) as agent:
            agent.wait_status("/readyz", 200)
            no_secret(agent, "checker-pass")


@pytest.mark.parametrize(("reuse", "expect_new"), [("true", False), ("false", True)])
def test_redis_reuses_one_connection_unless_told_not_to(reuse: str, expect_new: bool) -> None:
    with redis_server() as server:
        config = one_check(f"type: redis, url: 'redis://127.0.0.1:{server.port}', reuse_connection: {reuse}")
        with run_agent(config) as agent:
            agent.wait_status("/readyz", 200)
            before = server.connections_received()
            agent.wait_for(lambda: agent.status()["checks"]["dep"]["consecutive_successes"] >= 12)
            opened = server.connections_received() - before - 1  # less the second redis-cli connection itself
            assert (opened >= 5) if expect_new else (opened == 0), opened


def test_rediss_verifies_the_server_against_ca_file_and_says_why_it_does_not_trust_one(certs: Certs) -> None:
    key, cert = certs.make("redis", ip="127.0.0.1")
    _, other = certs.make("redis-other", ip="127.0.0.1")
    with redis_server(password="tls-pass", tls=(str(key), str(cert))) as server:
        url = f"rediss://:tls-pass@127.0.0.1:{server.port}"
        with run_agent(one_check(f"type: redis, url: '{url}', ca_file: '{cert}'")) as agent:
            agent.wait_status("/readyz", 200)
            assert message(agent) == "PONG"
            no_secret(agent, "tls-pass")
        with run_agent(one_check(f"type: redis, url: '{url}', ca_file: '{other}'")) as agent:
            agent.wait_status("/readyz", 503, f"TLS certificate of rediss://:<redacted>@127.0.0.1:{server.port} not trusted")
            assert "is ca_file the CA that signed it" in message(agent)
            no_secret(agent, "tls-pass")
        with run_agent(one_check(f"type: redis, url: '{url}', ca_file: '{cert}.missing'")) as agent:
            agent.wait_status("/readyz", 503, f"cannot read ca_file {cert}.missing: No such file or directory")
        with run_agent(one_check(f"type: redis, url: '{url}', tls_verify: false")) as agent:
            agent.wait_status("/readyz", 200)
        # The same server asked in plain text never answers PONG: TLS is all it speaks on that port.
        with run_agent(one_check(f"type: redis, url: 'redis://:tls-pass@127.0.0.1:{server.port}'")) as agent:
            agent.wait_for(lambda: agent.status()["checks"]["dep"]["last_result"] is not None)
            assert agent.get("/readyz")[0] == 503


def test_rediss_against_a_server_without_tls_fails(http_target: Target) -> None:
    # A plain Redis reads the TLS hello as a partial command and waits for the rest: the run times out.
    with redis_server() as server, run_agent(one_check(f"type: redis, url: 'rediss://127.0.0.1:{server.port}'")) as agent:
        agent.wait_status("/readyz", 503, "timed out after 500ms")
    # A server that answers in plain text (here HTTP's 400) fails the handshake, and the reason says so.
    port = http_target.server_address[1]
    with run_agent(one_check(f"type: redis, url: 'rediss://127.0.0.1:{port}'")) as agent:
        agent.wait_status("/readyz", 503, f"TLS handshake with rediss://127.0.0.1:{port} failed")
        assert "does the server speak TLS" in message(agent)


@pytest.mark.parametrize(("keys", "error"), [
    ("url: 'redis://127.0.0.1:6379', ca_file: /etc/ssl/ca.pem", "ca_file applies only to TLS"),
    ("url: 'rediss://127.0.0.1:6379', ca_file: /etc/ssl/ca.pem, tls_verify: false", "ca_file has no use"),
])
def test_redis_tls_options_that_contradict_the_url_are_refused(keys: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(one_check(f"type: redis, {keys}"), {})


# --- postgres ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [
    "postgres://postgres@127.0.0.1:5432/test",
    "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable",
])
def test_postgres_on_this_machine_runs_the_query(dsn: str) -> None:
    with run_agent(one_check(f"type: postgres, dsn: '{dsn}'")) as agent:
        agent.wait_status("/readyz", 200)
        assert message(agent) == "SELECT 1 -> 1"


def test_postgres_stopped_is_refused_and_restarted_passes_again() -> None:
    with postgres_cluster() as pg:
        dsn = f"postgres://checker:right-pass@127.0.0.1:{pg.port}/postgres"
        with run_agent(one_check(f"type: postgres, dsn: '{dsn}'")) as agent:
            agent.wait_status("/readyz", 200)
            pg.stop_immediately()
            agent.wait_status("/readyz", 503, "[-]dep failed: connection refused by 127.0.0.1")
            pg.start()
            agent.wait_status("/readyz", 200)
            no_secret(agent, "right-pass")


def test_postgres_paused_with_sigstop_times_out_and_recovers() -> None:
    with postgres_cluster() as pg:
        dsn = f"host=127.0.0.1 port={pg.port} user=checker password=right-pass dbname=postgres"
        with run_agent(one_check(f"type: postgres, dsn: '{dsn}'")) as agent:
            agent.wait_status("/readyz", 200)
            paused = pg.processes()
            for process in paused:
                process.send_signal(signal.SIGSTOP)
            try:
                agent.wait_status("/readyz", 503, "timed out after 500ms")
            finally:
                for process in paused:
                    process.send_signal(signal.SIGCONT)
            agent.wait_status("/readyz", 200)


def test_postgres_with_a_wrong_password_or_database_says_so() -> None:
    with postgres_cluster() as pg:
        wrong = f"postgres://checker:wr0ng-pass@127.0.0.1:{pg.port}/postgres"
        with run_agent(one_check(f"type: postgres, dsn: '{wrong}'")) as agent:
            agent.wait_status("/readyz", 503, "authentication failed at 127.0.0.1")
            no_secret(agent, "wr0ng-pass")
        missing = f"postgres://checker:right-pass@127.0.0.1:{pg.port}/nosuchdb"
        with run_agent(one_check(f"type: postgres, dsn: '{missing}'")) as agent:
            agent.wait_status("/readyz", 503, 'database "nosuchdb" does not exist')


def test_postgres_sslmode_require_fails_clearly_on_a_server_without_tls() -> None:
    with postgres_cluster() as pg:
        dsn = f"postgres://checker:right-pass@127.0.0.1:{pg.port}/postgres?sslmode=require"
        with run_agent(one_check(f"type: postgres, dsn: '{dsn}'")) as agent:
            text = agent.wait_for(lambda: message(agent))
            assert "ssl" in text.lower() and agent.get("/readyz")[0] == 503, text


def test_postgres_over_tls_verifies_the_server_with_sslrootcert_in_either_dsn_form(certs: Certs) -> None:
    key, cert = certs.make("postgres", ip="127.0.0.1")
    _, other = certs.make("postgres-other", ip="127.0.0.1")
    with postgres_cluster(tls=(key, cert)) as pg:
        # The query asks the server itself whether this session is encrypted.
        query = "query: 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
        url = f"postgres://checker:right-pass@127.0.0.1:{pg.port}/postgres?sslmode=verify-full&sslrootcert={cert}"
        pairs = f"host=127.0.0.1 port={pg.port} user=checker password=right-pass dbname=postgres sslmode=verify-full"
        for dsn in (url, f"{pairs} sslrootcert={cert} connect_timeout=3"):
            with run_agent(one_check(f"type: postgres, dsn: '{dsn}', {query}")) as agent:
                agent.wait_status("/readyz", 200)
                assert message(agent).endswith("-> True"), message(agent)
                no_secret(agent, "right-pass")
        with run_agent(one_check(f"type: postgres, dsn: '{pairs} sslrootcert={other}'")) as agent:
            agent.wait_status("/readyz", 503, "TLS certificate of 127.0.0.1 not trusted")
            assert "is sslrootcert the CA that signed it" in message(agent)
            no_secret(agent, "right-pass")


@pytest.mark.parametrize("reuse", ["true", "false"])
def test_postgres_reuses_one_connection_unless_told_not_to(reuse: str) -> None:
    dsn = "postgres://postgres@127.0.0.1:5432/test"
    config = one_check(f"type: postgres, dsn: '{dsn}', query: 'SELECT pg_backend_pid()', reuse_connection: {reuse}")
    with run_agent(config) as agent:
        agent.wait_status("/readyz", 200)
        backends = {message(agent)}
        for _ in range(5):
            successes = agent.status()["checks"]["dep"]["consecutive_successes"]
            agent.wait_for(lambda s=successes: agent.status()["checks"]["dep"]["consecutive_successes"] > s)
            backends.add(message(agent))
        assert (len(backends) == 1) if reuse == "true" else (len(backends) >= 4), backends


# --- configuration and packaging --------------------------------------------------------------------


def test_dependency_checks_are_refused_under_liveness_unless_allowed() -> None:
    for body in ("{type: redis, url: 'redis://cache:6379'}", "{type: postgres, dsn: 'host=db dbname=app'}"):
        with pytest.raises(ConfigError, match="restart storm"):
            load(f"checks: {{dep: {{probes: [liveness], {body[1:]}}}", {})
    load("checks: {dep: {type: postgres, dsn: 'host=/var/run/postgresql', probes: [liveness]}}", {})


def test_dsn_passwords_are_redacted_in_check_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""
        checks:
          a: {type: postgres, dsn: "host=db user=app password='p4ss word' dbname=app"}
          b: {type: postgres, dsn: "postgres://app:url-p4ss@db:5432/app"}
          c: {type: redis, url: "redis://app:redis-p4ss@cache:6379/1"}
    """))
    result = subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for secret in ("p4ss word", "url-p4ss", "redis-p4ss"):
        assert secret not in result.stdout
    assert "password=<redacted>" in result.stdout and "postgres://app:<redacted>@db:5432/app" in result.stdout


@pytest.mark.parametrize(("check", "module", "extra"), [
    ("{type: redis, url: 'redis://127.0.0.1:6379'}", "redis", "redis"),
    ("{type: postgres, dsn: 'postgres://127.0.0.1/test'}", "asyncpg", "postgres"),
    ("{type: grpc, address: '127.0.0.1:50051'}", "grpc", "grpc"),
])
def test_a_missing_client_library_exits_2_naming_the_extra(tmp_path, check: str, module: str, extra: str) -> None:  # type: ignore[no-untyped-def]
    # sitecustomize makes the library absent for this interpreter, exactly as if it were not installed.
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"checks: {{dep: {check}}}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for command in (["check-config", str(config)], ["run", "--config", str(config), "--listen", "127.0.0.1:0"]):
        result = subprocess.run([sys.executable, "-m", "agent", *command], capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 2
        assert f"checks.dep.type: a {check.split()[1].rstrip(',')} check needs the Python package that provides '{module}': " \
               f"pip install 'sidecar-agent[{extra}]'" in result.stderr


def test_client_libraries_load_only_when_their_check_is_configured() -> None:
    probe = ("import sys; from agent.config import load, dump, json_schema; "
             "c = load(\"checks: {t: {type: tcp, address: '127.0.0.1:1'}}\", {}); dump(c); json_schema(); "
             "print(sorted(m for m in ('redis', 'asyncpg', 'grpc') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "[]", result.stderr
