"""No secret anywhere (issue 6): plant a distinct secret in every place one can come from, make the checks fail
(and pass again) so that messages, log lines and transitions are produced, then search everything the agent
printed or served.

Sources: an http URL password, http header values, redis URL passwords (plain and ACL user), postgres DSN passwords
(URL, libpq key=value with a quoted password, and a DSN from an environment variable), the admin token from
token_env and from token_file, exec `env` values, and an exec check that prints its secret and exits 1 (so the
secret is in its output, the check's message). Places searched: stdout (JSON log lines, raw and decoded), /status,
/livez /readyz /startupz with ?verbose, /readyz/NAME (and /livez/NAME, /startupz/NAME), /metrics, the output of
`sidecar-agent check-config`.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.testing import AgentProcess, http_request, run_agent
from tests.servers import PostgresCluster, RedisServer, Target, free_port, own_address, postgres_cluster, redis_server

SECRETS = {
    "http URL password": "WebUrlPass-7f3a91",
    "http URL password (refused)": "WebDownPass-1c9e44",
    "http header value": "WebHeaderToken-b28d5e",
    "http header value 2": "WebApiKey-e04c77",
    "redis URL password": "RedisUrlPass-5a8f12",
    "redis ACL password": "RedisAclPass-93bd60",
    "postgres URL password": "PgUrlPass-2e71c8",
    "postgres key=value password": "Pg KV Pass-d4a0f3",
    "postgres DSN from the environment": "PgEnvPass-60b2e9",
    "admin token (token_env)": "AdminEnvToken-8c4f1d",
    "exec env value": "ExecEnvPass-f19a27",
    "exec env value it prints": 'ExecEcho-pässwörd"-3b7e05',
}
TOKEN_FILE_SECRET = "AdminFileToken-47d2ab"
INITIAL = "initial-server-pass-0"  # what the servers expect at first: every dependency check fails authentication


def config(target: Target, closed_port: int, redis: RedisServer, pg: PostgresCluster) -> str:
    s = SECRETS
    every = "interval: 150ms, timeout: 2s, failure_threshold: 1"
    return (
        "admin: {token_env: AGENT_TOKEN}\n"
        "log: {level: debug}\n"
        "shutdown: {drain_delay: 200ms}\n"
        "checks:\n"
        f"  web: {{type: http, url: 'http://webuser:{s['http URL password']}@127.0.0.1:{target.server_address[1]}/health', "
        f"headers: {{X-Api-Key: '{s['http header value 2']}'}}, probes: [liveness, readiness], {every}}}\n"
        f"  web-auth: {{type: http, url: 'http://127.0.0.1:{target.server_address[1]}/auth', "
        f"headers: {{Authorization: 'Bearer {s['http header value']}'}}, probes: [readiness], {every}}}\n"
        f"  web-down: {{type: http, url: 'http://u:{s['http URL password (refused)']}@127.0.0.1:{closed_port}/', probes: [readiness], {every}}}\n"
        f"  cache: {{type: redis, url: 'redis://:{s['redis URL password']}@127.0.0.1:{redis.port}/0', {every}}}\n"
        f"  cache-acl: {{type: redis, url: 'redis://alice:{s['redis ACL password']}@127.0.0.1:{redis.port}/0', {every}}}\n"
        f"  db-url: {{type: postgres, dsn: 'postgres://checker:{s['postgres URL password']}@127.0.0.1:{pg.port}/postgres', {every}}}\n"
        f"  db-kv: {{type: postgres, dsn: \"host=127.0.0.1 port={pg.port} user=checker2 password='{s['postgres key=value password']}' "
        f"dbname=postgres sslmode=disable\", {every}}}\n"
        f"  db-env: {{type: postgres, dsn: '${{PG_DSN}}', {every}}}\n"
        f"  script: {{type: exec, command: [/bin/sh, -c, 'test -n \"$DB_PASSWORD\"'], env: {{DB_PASSWORD: '{s['exec env value']}'}}, "
        f"probes: [startup], {every}}}\n"
        f"  leaky: {{type: exec, command: [/bin/sh, -c, 'echo \"the password is $LEAKY\"; exit 1'], "
        f"env: {{LEAKY: '{s['exec env value it prints']}'}}, probes: [liveness, readiness], {every}}}\n"
    )


def environment(pg: PostgresCluster) -> dict[str, str]:
    return {"AGENT_TOKEN": SECRETS["admin token (token_env)"],
            "PG_DSN": f"postgres://checker3:{SECRETS['postgres DSN from the environment']}@127.0.0.1:{pg.port}/postgres"}


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def check_config(path: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "check-config", str(path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def everything_served(agent: AgentProcess, checks: dict[str, list[str]]) -> dict[str, str]:
    """Every answer the agent serves that could carry a message, by where it came from."""
    seen = {"/status": agent.get("/status")[1], "/metrics": agent.get("/metrics")[1],
            "/metrics (OpenMetrics)": agent.get("/metrics", headers={"Accept": "application/openmetrics-text"})[1]}
    for path in ("/livez", "/readyz", "/startupz"):
        for query in ("", "?verbose", "?verbose&exclude=web"):
            seen[path + query] = agent.get(path + query)[1]
    short = {"liveness": "livez", "readiness": "readyz", "startup": "startupz"}
    for name, probes in checks.items():
        for probe in probes:
            seen[f"/{short[probe]}/{name}"] = agent.get(f"/{short[probe]}/{name}")[1]
    return seen


def log_texts(agent: AgentProcess) -> dict[str, str]:
    """The log, raw and with every JSON line decoded (a secret escaped by JSON must not slip through)."""
    lines = agent.logs()
    decoded = []
    for line in lines:
        if line.startswith("{"):
            decoded.append(" ".join(str(v) for v in json.loads(line).values()))
    return {"stdout": "\n".join(lines), "stdout (decoded)": "\n".join(decoded)}


def assert_no_secret(places: dict[str, str], secrets: dict[str, str]) -> None:
    leaks = [(what, where) for where, text in places.items() for what, secret in secrets.items() if secret in text]
    assert not leaks, f"secrets found: {leaks}"


@pytest.fixture
def servers(http_target: Target) -> Iterator[tuple[Target, RedisServer, PostgresCluster]]:
    http_target.status = 500
    with redis_server(password=INITIAL) as redis, postgres_cluster() as pg:
        for role in ("checker", "checker2", "checker3"):
            pg.psql(f"DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD '{INITIAL}'; EXCEPTION WHEN duplicate_object THEN "
                    f"ALTER ROLE {role} PASSWORD '{INITIAL}'; END $$")
        redis.cli("ACL", "SETUSER", "alice", "on", f">{INITIAL}", "~*", "+@all")
        yield http_target, redis, pg


def test_no_secret_in_logs_status_probes_metrics_or_check_config(servers: tuple[Target, RedisServer, PostgresCluster],
                                                                 tmp_path: pathlib.Path) -> None:
    target, redis, pg = servers
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once the socket is closed
    text = config(target, closed, redis, pg)
    env = environment(pg)
    checks = {"web": ["liveness", "readiness"], "web-auth": ["readiness"], "web-down": ["readiness"], "cache": ["readiness"], "cache-acl": ["readiness"],
              "db-url": ["readiness"], "db-kv": ["readiness"], "db-env": ["readiness"], "script": ["startup"],
              "leaky": ["liveness", "readiness"]}
    places: dict[str, str] = {}
    with run_agent(text, env=env, listen="0.0.0.0:0") as agent:
        token = SECRETS["admin token (token_env)"]

        # 1. Everything fails first, with messages.
        def failing() -> bool:
            status = agent.status()["checks"]
            return all(status[name]["state"] == "failing" for name in checks if name != "script")
        agent.wait_for(failing, timeout=20)
        messages = {name: c["last_result"]["message"] for name, c in agent.status()["checks"].items()}
        assert "authentication failed" in messages["cache"] and "authentication failed" in messages["db-kv"], messages
        assert messages["leaky"] == "exit 1: the password is <redacted>", messages["leaky"]
        assert "webuser:<redacted>@" in messages["web"], messages["web"]
        places.update({f"{k} (failing)": v for k, v in everything_served(agent, checks).items()})

        # 2. The servers learn the passwords: transitions to passing, logged with their messages.
        target.status = 200
        redis.cli("ACL", "SETUSER", "alice", "on", "resetpass", f">{SECRETS['redis ACL password']}")
        redis.cli("CONFIG", "SET", "requirepass", SECRETS["redis URL password"])
        redis.password = SECRETS["redis URL password"]
        for role, secret in (("checker", "postgres URL password"), ("checker2", "postgres key=value password"),
                             ("checker3", "postgres DSN from the environment")):
            pg.psql(f"ALTER ROLE {role} PASSWORD '{SECRETS[secret]}'")

        def passing() -> bool:
            status = agent.status()["checks"]
            return all(status[name]["state"] == "passing" for name in checks if name not in ("web-down", "leaky"))
        agent.wait_for(passing, timeout=20)
        places.update({f"{k} (passing)": v for k, v in everything_served(agent, checks).items()})

        # 3. Admin calls: from loopback, and from another address with no, a wrong and the right token.
        assert agent.get("/admin/drain", method="POST", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert agent.get("/admin/undrain", method="POST")[0] == 200
        url = f"http://{own_address()}:{agent.port}/admin/drain"
        assert http_request(url, method="POST")[0] == 401
        assert http_request(url, method="POST", headers={"Authorization": f"Bearer {token}x"})[0] == 403
        assert http_request(url, method="POST", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert agent.get("/admin/undrain", method="POST")[0] == 200
        # A malformed request that carries the token (aiohttp logs the bad header line).
        raw(agent.port, f"GET /livez HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode())

        # 4. Reloads: one applied, one refused (both logged).
        path = pathlib.Path(agent.proc.args[agent.proc.args.index("--config") + 1])  # type: ignore[index,union-attr]
        agent.signal(1)  # SIGHUP, the same file
        agent.wait_for(lambda: agent.status()["agent"]["config_reloads"] == 1)
        path.write_text(text + "  bad: {type: http, url: 'http://u:" + SECRETS["http URL password"] + "@127.0.0.1:1/', timeot: 1s}\n")
        assert agent.get("/admin/reload", method="POST")[0] == 422
        path.write_text(text)
        done = check_config(path, env)
        places["check-config"] = done.stdout + done.stderr
        assert "<redacted>" in places["check-config"] and "10 checks" in places["check-config"], places["check-config"]
        places.update({f"{k} (after reloads)": v for k, v in everything_served(agent, checks).items()})
        agent.signal(15)  # SIGTERM: the shutdown's log lines too
        agent.wait_exit()
    places.update(log_texts(agent))
    assert any("is now passing" in line for line in agent.logs()) and any("is now failing" in line for line in agent.logs())
    assert_no_secret(places, SECRETS)


def test_no_admin_token_from_token_file_anywhere(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_FILE_SECRET + "\n")
    text = (f"admin: {{token_file: '{token_file}'}}\nshutdown: {{drain_delay: 200ms}}\n"
            "checks: {beat: {type: heartbeat, ttl: 1s, interval: 100ms}}\n")
    places: dict[str, str] = {}
    with run_agent(text, listen="0.0.0.0:0") as agent:
        url = f"http://{own_address()}:{agent.port}"
        assert http_request(url + "/admin/drain", method="POST", headers={"Authorization": "Bearer nope"})[0] == 403
        assert http_request(url + "/admin/drain", method="POST",
                            headers={"Authorization": f"Bearer {TOKEN_FILE_SECRET}"})[0] == 200
        assert http_request(url + "/admin/undrain", method="POST",
                            headers={"Authorization": f"Bearer {TOKEN_FILE_SECRET}"})[0] == 200
        raw(agent.port, f"POST /admin/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_FILE_SECRET}\x7f\r\n\r\n".encode())
        time.sleep(0.3)
        places.update(everything_served(agent, {"beat": ["readiness"]}))
        path = pathlib.Path(agent.proc.args[agent.proc.args.index("--config") + 1])  # type: ignore[index,union-attr]
        done = check_config(path, {})
        places["check-config"] = done.stdout + done.stderr
        agent.signal(15)
        agent.wait_exit()
    places.update(log_texts(agent))
    assert_no_secret(places, {"admin token (token_file)": TOKEN_FILE_SECRET})


@pytest.mark.parametrize("url", [
    "checks: {c: {type: redis, url: 'redis://:UnescapedPw/rest@127.0.0.1:6379/0'}}",
    "checks: {c: {type: http, url: 'http://user:UnescapedPw#rest@127.0.0.1:8080/'}}",
    "checks: {c: {type: postgres, dsn: 'postgres://user:UnescapedPw?rest@127.0.0.1:5432/db'}}",
])
def test_a_url_whose_password_is_not_escaped_is_refused_without_printing_it(tmp_path: pathlib.Path, url: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(url + "\n")
    done = check_config(path, {})
    assert done.returncode == 2, done.stdout + done.stderr
    key = "checks.c.dsn" if "postgres" in url else "checks.c.url"
    assert done.stderr == f"{path}: {key}: not a valid URL (is the port a number? percent-encode '/', '?', '#' and '@' " \
                          "in a password)\n", done.stderr
    assert "UnescapedPw" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_short_secret_does_not_destroy_the_log_structure(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("shutdown: {drain_delay: 100ms}\nchecks: {cache: {type: redis, url: 'redis://:e@127.0.0.1:1/0', interval: 100ms}}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(path), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if http_request(f"http://127.0.0.1:{port}/agent/readyz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert records
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), records[:2]
    assert any(f"serving probes on 127.0.0.1:{port}" in r["message"] for r in records)
