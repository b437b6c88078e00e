"""The loader: typed config out, or every problem with its key path; secrets redacted in the dump."""

import dataclasses
import json
import pathlib
import textwrap

import jsonschema
import pytest
import yaml

from agent.config import DEFAULT_CONFIG, TOP, ConfigError, dump, json_schema, load
from agent.fields import Field, Number, Problems, Section, with_defaults

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
ENV = {"AGENT_TOKEN": "tok-123", "DATABASE_URL": "postgres://u:pw@db:5432/x"}


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(textwrap.dedent(text), ENV if env is None else env)
    return [f"{p}: {m}" if p else m for p, m in info.value.problems]


def test_the_embedded_default_serves_everywhere_with_no_checks() -> None:
    config = load(DEFAULT_CONFIG, {})
    assert config.listen == ("::", 8686)
    assert config.checks == ()


def test_an_empty_file_is_the_default() -> None:
    assert load("", {}) == load(DEFAULT_CONFIG, {})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path: pathlib.Path) -> None:
    load(path.read_bytes(), ENV)


def test_check_defaults_follow_the_design() -> None:
    config = load("checks: {web: {type: tcp, address: '127.0.0.1:80'}}", {})
    web = config.checks[0]
    assert (web.probes, web.interval, web.timeout, web.initial_delay) == (("readiness",), 10.0, 1.0, 0.0)
    assert (web.failure_threshold, web.success_threshold, web.allow_in_liveness) == (3, 1, False)
    assert web.stale_after == 21.0


def test_config_objects_are_frozen() -> None:
    config = load(DEFAULT_CONFIG, {})
    with pytest.raises(AttributeError):
        config.listen = ("127.0.0.1", 1)  # type: ignore[misc]


def test_variables_expand_with_and_without_defaults() -> None:
    config = load("""
        listen: ${HOST:-127.0.0.1}:${PORT}
        checks:
          c: {type: tcp, address: "127.0.0.1:${PORT}", interval: "${EVERY:-3s}", failure_threshold: "${FT}"}
          d: {type: exec, command: [echo, "$${literal}"]}
    """, {"PORT": "9000", "FT": "5"})
    assert config.listen == ("127.0.0.1", 9000)
    assert config.checks[0].interval == 3.0 and config.checks[0].failure_threshold == 5
    assert config.checks[1].params.command == ("echo", "${literal}")


def test_an_unset_variable_without_default_names_its_key() -> None:
    assert problems("checks: {db: {type: http, url: '${NOPE}'}}", {}) == [
        "checks.db.url: environment variable NOPE is not set (write ${NOPE:-default} to give a default)"]


@pytest.mark.parametrize(("text", "expected"), [
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', interval: fast}}",
     "checks.db.interval: expected a duration like 2s, got 'fast'"),
    ("lgo: {}", "lgo: unknown key; did you mean 'log'?"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', timeot: 1s}}", "checks.db.timeot: unknown key; did you mean 'timeout'?"),
    ("checks: {db: {type: postgress}}", "checks.db.type: unknown check type 'postgress'"),
    ("checks: {db: {type: tcp}}", "checks.db.address: required key is missing"),
    ("checks: {db: {address: 'x:1'}}", "checks.db.type: required key is missing"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', failure_threshold: 0}}",
     "checks.db.failure_threshold: must be at least 1, got 0"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', success_threshold: many}}",
     "checks.db.success_threshold: expected a whole number, got 'many'"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', timeout: 0s}}", "checks.db.timeout: must be longer than 0s"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:70000'}}", "checks.db.address: port must be a number from 1 to 65535"),
    ("listen: 0.0.0.0:0", "listen: port must be a number from 1 to 65535"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', probes: [liveliness]}}",
     "checks.db.probes[0]: expected one of liveness, readiness, startup"),
    ("checks: {db: {type: tcp, address: '127.0.0.1:1', probes: readiness}}", "checks.db.probes: expected a list"),
    ("checks: {w: {type: http, url: 'ftp://x/'}}", "checks.w.url: expected a URL starting with http:// or https://"),
    ("checks: {w: {type: http, url: 'http://127.0.0.1/', expect_body: '('}}",
     "checks.w.expect_body: not a valid regular expression"),
    ("checks: {w: {type: http, url: 'http://127.0.0.1/', status: 299-200}}", "checks.w.status: expected status codes"),
    ("checks: {e: {type: exec, command: []}}", "checks.e.command: must not be an empty list"),
    ("checks: {p: {type: process}}", "checks.p: a process check needs app.match"),
    ("app: {match: {name: a, cmdline: b}}", "app.match: set exactly one of pidfile, name, cmdline"),
    ("app: {match: {cmdline: '[unclosed'}}", "app.match.cmdline: not a valid regular expression"),
    ("shutdown: {stop_signal: SIGNOPE}", "shutdown.stop_signal: expected one of"),
    ("shutdown: {drain_connections: {port: 0, timeout: 1s}}", "shutdown.drain_connections.port: must be at least 1"),
    ("log: {format: xml}", "log.format: expected one of json, text, got 'xml'"),
    ("checks: {'bad name': {type: tcp, address: 'x:1'}}", "checks.bad name: a check name is 1-63 letters"),
    ("checks: [a, b]", "checks: expected a mapping of check names to checks"),
    ("admin: {token_env: MISSING_TOKEN}", "admin.token_env: environment variable MISSING_TOKEN is not set"),
    ("- just\n- a list", "expected a mapping of keys"),
])
def test_each_bad_input_names_its_key_path(text: str, expected: str) -> None:
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_yaml_syntax_errors_give_the_line() -> None:
    found = problems("listen: 1.2.3.4:5\nchecks:\n  db: {type: tcp\n")
    assert found[0].startswith("line 4, column 1:") or found[0].startswith("line 3"), found


def test_a_duplicate_check_name_is_refused_though_yaml_would_keep_the_last() -> None:
    found = problems("""
        checks:
          db: {type: tcp, address: '127.0.0.1:1'}
          db: {type: tcp, address: '127.0.0.1:2'}
    """)
    assert found == ["line 4, column 3: duplicate key 'db' (YAML would keep only the last one)"]


def test_undecodable_bytes_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load(b"listen: \xff\xfe:80\n", {})


def test_several_documents_are_refused() -> None:
    assert problems("listen: :1\n---\nlisten: :2\n") == ["expected one YAML document, found several (remove the extra '---')"]


def test_every_problem_is_reported_in_one_run() -> None:
    found = problems("""
        lgo: {}
        checks:
          a: {type: tcp, address: '127.0.0.1:1', interval: soon}
          b: {type: htp}
        shutdown: {drain_delay: 20s, stop_timeout: 20s}
    """)
    assert [p.split(":")[0] for p in found] == ["lgo", "checks.a.interval", "checks.b.type", "shutdown.grace_period"]


@pytest.mark.parametrize("check", [
    "{type: tcp, address: 'db.internal:5432'}",
    "{type: http, url: 'https://api.example.com/health'}",
    "{type: tcp, address: '10.0.0.5:6379'}",
])
def test_a_dependency_check_under_liveness_is_refused(check: str) -> None:
    found = problems(f"checks: {{dep: {{probes: [liveness], **{check}}}}}".replace("**{", "").replace("}}}", "}}"))
    assert len(found) == 1 and found[0].startswith("checks.dep.probes: a ") and "restart storm" in found[0]


def test_a_dependency_check_under_liveness_passes_when_allowed_explicitly() -> None:
    config = load("checks: {dep: {type: tcp, address: 'db:5432', probes: [liveness], allow_in_liveness: true}}", {})
    assert config.checks[0].probes == ("liveness",)


def test_loopback_checks_are_fine_under_liveness() -> None:
    load("checks: {a: {type: http, url: 'http://localhost:8080/', probes: [liveness]},"
         " b: {type: tcp, address: '127.0.0.1:80', probes: [liveness]}}", {})


def test_a_shutdown_budget_over_the_grace_period_is_refused() -> None:
    assert problems("shutdown: {drain_delay: 15s, stop_timeout: 20s, grace_period: 30s}") == [
        "shutdown.grace_period: the shutdown budget (drain 15s + stop_timeout 20s = 35s) is longer than grace_period 30s: "
        "the kubelet would SIGKILL the pod mid-sequence"]


def test_the_connection_wait_runs_beside_the_drain_delay_in_the_budget() -> None:
    config = load("shutdown: {drain_delay: 5s, drain_connections: {port: 8080, timeout: 10s}, stop_timeout: 20s}", {})
    assert config.shutdown.budget == 30.0


def test_the_dump_redacts_every_secret() -> None:
    config = load("""
        admin: {token_env: AGENT_TOKEN}
        checks:
          api: {type: http, url: 'http://user:url-pass@127.0.0.1:8080/x', headers: {X-Api-Key: Bearer hdr-secret}}
          script: {type: exec, command: [./probe.sh], env: {API_KEY: env-secret}}
    """, {"AGENT_TOKEN": "token-secret"})
    text = yaml.safe_dump(dump(config))
    for secret in ("url-pass", "hdr-secret", "env-secret", "token-secret"):
        assert secret not in text
        assert secret in config.secrets
    assert "http://user:<redacted>@127.0.0.1:8080/x" in text
    assert "API_KEY: <redacted>" in text


def test_the_dump_loads_back_to_the_same_config() -> None:
    config = load((ROOT / "examples" / "design.yaml").read_text(), ENV)
    again = load(yaml.safe_dump(dump(config)), ENV)
    assert again == config


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_schema(path: pathlib.Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_the_embedded_default_validates_against_the_schema() -> None:
    jsonschema.validate(yaml.safe_load(DEFAULT_CONFIG), json_schema())


@pytest.mark.parametrize("text", [
    "lgo: {}",
    "checks: {db: {type: postgress}}",
    "checks: {db: {type: tcp}}",
    "checks: {db: {type: tcp, address: '127.0.0.1:1', failure_threshold: 0}}",
    "checks: {db: {type: tcp, address: '127.0.0.1:1', timeot: 1s}}",
    "checks: {db: {type: tcp, address: '127.0.0.1:1', interval: fast}}",
    "log: {format: xml}",
])
def test_the_schema_refuses_what_the_loader_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        load(text, {})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), json_schema())


def test_the_schema_is_a_valid_json_schema() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)


def test_stop_scope_is_group_by_default_and_only_group_or_process() -> None:
    assert load("checks: {}\n", {}).shutdown.stop_scope == "group"
    assert load("shutdown: {stop_scope: process}\n", {}).shutdown.stop_scope == "process"
    assert problems("shutdown: {stop_scope: tree}\n") == ["shutdown.stop_scope: expected one of group, process, got 'tree'"]


@pytest.mark.parametrize("section", [f.name for f in TOP if isinstance(f.kind, Section)] + ["checks"])
def test_an_empty_section_is_the_same_as_a_missing_one(section: str) -> None:
    """Each default is written once (on the section's dataclass), so `section: {}` and no key at all agree."""
    assert load(f"{section}: {{}}", {}) == load("", {})
    assert load(f"{section}:", {}) == load("", {})


def test_a_default_written_on_both_the_dataclass_and_its_field_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Limits:
        most: int = 8

    with pytest.raises(ValueError, match=r"the default of Limits\.most is written twice"):
        Section([Field("most", Number(integer=True), 8)], Limits)
    assert Section([Field("most", Number(integer=True))], Limits).parse({}, "limits", Problems()) == Limits()
    # A plug-in's check type may repeat its params' default, as long as the two agree.
    assert with_defaults([Field("most", Number(integer=True), 8)], Limits, strict=False)[0].default == 8
    with pytest.raises(ValueError):
        with_defaults([Field("most", Number(integer=True), 9)], Limits, strict=False)
