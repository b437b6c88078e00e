"""Property tests of the config loader (issue 6): any input loads, or raises ConfigError locating every problem.

`agent.config.load(text, env)` must never raise anything but `agent.fields.ConfigError`, and each problem of
that error must say where it is: a key path, or a line of the file. A config that loads must also dump (what
`check-config` prints) without an exception.

Three families of input:
- YAML trees of mappings, lists and scalars (known keys mixed with random ones, so the fuzz reaches deep into
  the check types), dumped by PyYAML;
- raw text (YAML-ish alphabet and any unicode) and raw bytes;
- mutations of valid configs (examples/design.yaml and RICH, which has every check type and every section):
  keys dropped, values of another type, values swapped, unknown keys inserted, wrong numbers, `${VAR}`
  references (set, unset, with defaults).

The bugs the fuzz found are pinned by the tests at the bottom of this module. Should a new one be found, it can
be listed in KNOWN_BUGS (with its own test) so that the fuzz goes on looking for others meanwhile.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import dump, load
from agent.fields import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[2]
DESIGN = (ROOT / "examples" / "design.yaml").read_text()
DESIGN_ENV = {"AGENT_TOKEN": "tok-design"}

RICH = textwrap.dedent("""\
    listen: 127.0.0.1:8686
    log: {level: debug, format: text}
    admin: {token_env: AGENT_TOKEN}
    app:
      match: {cmdline: "gunicorn .*app:app"}
      exit_with_app: false
    agent: {max_loop_lag: 2s, max_concurrent_exec: 4}
    checks:
      proc: {type: process, max_rss: 512Mi, max_threads: 500, max_fds: 1000, max_cpu: 1.5, probes: [liveness]}
      web:
        type: http
        url: http://user:web-pass@127.0.0.1:8080/healthz
        method: GET
        headers: {X-Api-Key: abcdef123}
        status: [200-299, 304]
        expect_body: "ok|ready"
        tls_verify: false
        probes: [liveness, startup]
        interval: 5s
        timeout: 500ms
        initial_delay: 1s
        failure_threshold: 2
        success_threshold: 2
      port: {type: tcp, address: "127.0.0.1:8080", interval: 1m30s}
      script: {type: exec, command: [/bin/sh, -c, "exit 0"], env: {SECRET: s3cret}, timeout: 2s}
      marker: {type: file, path: /tmp/migrated, max_age: 1h, probes: [startup]}
      beat: {type: heartbeat, ttl: 30s, probes: []}
      cache: {type: redis, url: "redis://:redis-pass@cache:6379/0", reuse_connection: false}
      db: {type: postgres, dsn: "${DATABASE_URL:-postgres://u:pg-pass@db:5432/app}", query: SELECT 1}
      db2: {type: postgres, dsn: "host=db dbname=app user=u password='p w' sslmode=require"}
      rpc: {type: grpc, address: "rpc:50051", service: health, tls: true, server_name: rpc.internal}
      name: {type: dns, name: example.com, record_type: mx, nameserver: "10.96.0.10:53", require_records: false}
    shutdown:
      drain_delay: 5s
      relay_signal: true
      stop_signal: TERM
      stop_timeout: 20s
      drain_connections: {port: 8080, timeout: 10s}
      grace_period: 30s
    """)
RICH_ENV = {"AGENT_TOKEN": "tok-rich"}

# Keys the loader knows, so that generated trees reach past the first unknown key now and then.
TOP_KEYS = ["listen", "log", "admin", "app", "checks", "shutdown", "agent"]
CHECK_TYPES = ["process", "http", "tcp", "exec", "file", "heartbeat", "redis", "postgres", "grpc", "dns"]
FIELD_KEYS = [
    "type", "probes", "interval", "timeout", "initial_delay", "failure_threshold", "success_threshold",
    "allow_in_liveness", "url", "method", "headers", "status", "expect_body", "tls_verify", "address", "command",
    "env", "path", "max_age", "ttl", "reuse_connection", "dsn", "query", "service", "tls", "ca_file", "server_name",
    "name", "record_type", "nameserver", "require_records", "max_rss", "max_threads", "max_fds", "max_cpu",
    "level", "format", "token_file", "token_env", "match", "exit_with_app", "pidfile", "cmdline", "drain_delay",
    "relay_signal", "stop_signal", "stop_timeout", "drain_connections", "port", "grace_period", "max_loop_lag",
    "max_concurrent_exec",
]
ENV_NAMES = ["A", "PORT", "UNSET", "EMPTY", "DATABASE_URL", "AGENT_TOKEN"]
FUZZ_ENV = {"A": "1", "PORT": "8080", "EMPTY": "", "DATABASE_URL": "postgres://u:pw@db/x", "AGENT_TOKEN": "t"}

# --- what counts as a located problem -----------------------------------------------------------------

LINE = re.compile(r"\bline \d+")
# About the document as a whole: its root is no mapping, it holds several documents, or its root is a lone
# `${VAR}` string (the root's key path is empty).
WHOLE_DOCUMENT = ("expected a mapping of keys", "expected one YAML document", "environment variable ")


def unlocated(error: ConfigError) -> list[tuple[str, str]]:
    """The problems that name neither a key path nor a line (nor are about the whole document)."""
    return [(path, message) for path, message in error.problems
            if not path and not LINE.search(message) and not message.startswith(WHOLE_DOCUMENT)]


# --- known loader bugs --------------------------------------------------------------------------------------

def _frames(exc: BaseException) -> list[tuple[str, str]]:
    return [(pathlib.Path(f.filename).as_posix(), f.name) for f in traceback.extract_tb(exc.__traceback__)]


def _raised_in(exc: BaseException, path_end: str, function: str) -> bool:
    return any(path.endswith(path_end) and name == function for path, name in _frames(exc))


# Every bug the fuzz found is fixed; an entry here would excuse a loader exception that matches it.
KNOWN_BUGS: dict[str, Callable[[BaseException], bool]] = {}
KNOWN_UNLOCATED: tuple[re.Pattern[str], ...] = ()


def known_bug(exc: BaseException) -> str | None:
    return next((name for name, matches in KNOWN_BUGS.items() if matches(exc)), None)


def check_loads_or_refuses(data: str | bytes, env: dict[str, str]) -> None:
    """The property: a Config that dumps, or a ConfigError whose every problem is located."""
    try:
        config = load(data, env)
    except ConfigError as error:
        left = [(p, m) for p, m in unlocated(error) if not any(k.search(m) for k in KNOWN_UNLOCATED)]
        assert not left, f"problems without a key path or a line: {left}"
        return
    except Exception as exc:  # noqa: BLE001 - the property is that nothing else escapes
        if known_bug(exc):
            return
        raise AssertionError(f"load raised {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}") from None
    yaml.safe_dump(dump(config))  # what check-config prints


# --- strategies -----------------------------------------------------------------------------------------

def big_int() -> st.SearchStrategy[int]:
    return st.sampled_from([0, -1, 1, 65535, 65536, 2**31, 2**63, 10**30, 10**400, -(10**400)])


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), big_int(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "2s", "500ms", "1m30s", "0s", "-1s", "10x", "512Mi", "2Gi", "127.0.0.1:80", ":0", "[::1]:53",
                     "http://u:p@127.0.0.1:1/x", "redis://:p@127.0.0.1:6379/0", "postgres://u:p@h/db", "host=h port=x",
                     "SIGTERM", "KILL", "liveness", "readiness", "startup", "200-399", "599-100", "(", "a{99}",
                     "${A}", "${UNSET}", "${UNSET:-3s}", "$$", "${", "json", "text", "debug", *CHECK_TYPES]),
    st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2100, 1, 1)),
)
keys = st.one_of(st.sampled_from(TOP_KEYS + FIELD_KEYS + CHECK_TYPES), st.text(min_size=1, max_size=12))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
                     max_leaves=25)


@st.composite
def check_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A check body with a known type and a mix of its keys, with values of any kind."""
    body: dict[str, Any] = {"type": draw(st.sampled_from(CHECK_TYPES))}
    for key in draw(st.lists(st.sampled_from(FIELD_KEYS), max_size=6, unique=True)):
        body[key] = draw(trees)
    return body


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A top-level mapping of known and random sections, with checks of known types most of the time."""
    doc: dict[str, Any] = draw(st.dictionaries(st.sampled_from(TOP_KEYS), trees, max_size=4))
    if draw(st.booleans()):
        doc["checks"] = draw(st.dictionaries(st.text(min_size=1, max_size=8) | st.sampled_from(["web", "db", "a.b_c-d"]),
                                             check_bodies() | trees, max_size=3))
    if draw(st.booleans()):
        doc[draw(keys)] = draw(trees)
    return doc


YAMLISH = st.lists(st.sampled_from([*"abcdlistenchk:{}[]-,&*!|>'\"#%@`?\n \t$01234567.~\\", "<<", "---", ": ", "\n  "]),
                   max_size=60).map("".join)


def dump_yaml(tree: Any) -> str:
    return yaml.safe_dump(tree, allow_unicode=True, default_flow_style=None, sort_keys=False)


# --- mutations of valid configs ------------------------------------------------------------------------

def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a tree (mapping keys and list indexes), parents before children."""
    out = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.append((*prefix, key))
            out.extend(paths(value, (*prefix, key)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out.append((*prefix, index))
            out.extend(paths(value, (*prefix, index)))
    return out


def parent_of(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


WRONG_NUMBERS = [0, -1, -0.5, 1.5, 1e308, float("inf"), float("nan"), 10**400, -(10**400), "1e3", "0x10", "-3s", "99999999999"]
OTHER_TYPES = [None, True, "", "text", 7, 2.5, [], ["x"], {}, {"k": "v"}, [{"a": [1]}]]


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` (a parsed valid config) with 1 to 5 random mutations applied."""
    tree = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 5))):
        all_paths = paths(tree)
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent, last = parent_of(tree, path), path[-1]
        kind = draw(st.sampled_from(["drop", "retype", "swap", "unknown", "number", "var", "random"]))
        if kind == "drop":
            del parent[last]
        elif kind == "retype":
            parent[last] = copy.deepcopy(draw(st.sampled_from(OTHER_TYPES)))  # a fresh copy: later steps mutate it
        elif kind == "swap":
            other = draw(st.sampled_from(all_paths))
            try:
                other_parent = parent_of(tree, other)
                parent[last], other_parent[other[-1]] = copy.deepcopy(other_parent[other[-1]]), copy.deepcopy(parent[last])
            except (KeyError, IndexError, TypeError):
                pass  # the other path went away with an earlier change in this swap
        elif kind == "unknown":
            target = parent[last] if isinstance(parent[last], dict) else parent
            if isinstance(target, dict):
                target[draw(st.sampled_from(["timeot", "intervall", "typ", "extra", "probe", "x" * 70, "1", "checks"]))] = draw(scalars)
        elif kind == "number":
            parent[last] = draw(st.sampled_from(WRONG_NUMBERS))
        elif kind == "var":
            name = draw(st.sampled_from(ENV_NAMES))
            form = draw(st.sampled_from(["${%s}", "${%s:-}", "${%s:-5s}", "x${%s}y", "$${%s}", "${%s:-${A}}"]))
            parent[last] = form % name
        else:
            parent[last] = draw(trees)
    return tree


DESIGN_TREE = yaml.safe_load(DESIGN)
RICH_TREE = yaml.safe_load(RICH)
# 250 inputs per property in the test run; RELIABILITY_FUZZ_EXAMPLES asks for more (bench/bench_reliability.py does).
EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "250"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_base_configs_load() -> None:
    assert len(load(DESIGN, DESIGN_ENV).checks) == 4
    rich = load(RICH, RICH_ENV)
    assert sorted(c.type for c in rich.checks) == sorted([*CHECK_TYPES, "postgres"])
    assert {"web-pass", "abcdef123", "s3cret", "redis-pass", "pg-pass", "p w", "tok-rich"} <= rich.secrets


@SETTINGS
@given(documents())
def test_any_yaml_tree_loads_or_is_refused_with_located_problems(tree: Any) -> None:
    check_loads_or_refuses(dump_yaml(tree), FUZZ_ENV)


@SETTINGS
@given(trees)
def test_any_yaml_value_at_the_top_loads_or_is_refused(tree: Any) -> None:
    check_loads_or_refuses(dump_yaml(tree), FUZZ_ENV)


@SETTINGS
@given(st.one_of(YAMLISH, st.text(max_size=200)))
def test_any_text_loads_or_is_refused_with_located_problems(text: str) -> None:
    check_loads_or_refuses(text, FUZZ_ENV)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), YAMLISH.map(lambda t: t.encode("utf-8"))))
def test_any_bytes_load_or_are_refused_with_located_problems(data: bytes) -> None:
    check_loads_or_refuses(data, FUZZ_ENV)


@SETTINGS
@given(mutated(DESIGN_TREE), st.booleans())
def test_any_mutation_of_the_design_example_loads_or_is_refused(tree: Any, with_env: bool) -> None:
    check_loads_or_refuses(dump_yaml(tree), {**DESIGN_ENV, **FUZZ_ENV} if with_env else {})


@SETTINGS
@given(mutated(RICH_TREE), st.booleans())
def test_any_mutation_of_a_config_with_every_check_type_loads_or_is_refused(tree: Any, with_env: bool) -> None:
    check_loads_or_refuses(dump_yaml(tree), {**RICH_ENV, **FUZZ_ENV} if with_env else {})


@SETTINGS
@given(st.data())
def test_any_text_edit_of_a_valid_config_loads_or_is_refused(data: st.DataObject) -> None:
    """Mutations below the tree: characters inserted, deleted or replaced in the YAML text itself."""
    text = data.draw(st.sampled_from([DESIGN, RICH]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.one_of(st.just(""), YAMLISH.filter(lambda t: len(t) < 10), st.sampled_from(["${UNSET}", "&a", "*a", "\t"])))
        text = text[:pos] + insert + text[pos + cut:]
    check_loads_or_refuses(text, {**RICH_ENV, **DESIGN_ENV})


# --- the bugs the fuzz found, pinned -----------------------------------------------------------------------

def refuses_cleanly(text: str | bytes) -> None:
    with pytest.raises(ConfigError) as info:
        load(text, {})
    assert not unlocated(info.value), info.value.problems


def test_a_timestamp_that_is_no_date_is_a_config_error() -> None:
    refuses_cleanly("listen: 2001-13-45\n")


def test_an_int_of_5000_digits_is_a_config_error() -> None:
    refuses_cleanly("checks: {a: {type: tcp, address: '127.0.0.1:1', failure_threshold: " + "9" * 5000 + "}}\n")


def test_a_duration_beyond_a_float_is_a_config_error() -> None:
    refuses_cleanly("checks: {a: {type: tcp, address: '127.0.0.1:1', interval: " + "9" * 400 + "}}\n")


def test_a_number_beyond_a_float_is_a_config_error() -> None:
    refuses_cleanly("agent: {max_concurrent_exec: " + "9" * 400 + "}\n")


def test_a_regex_with_a_huge_repeat_count_is_a_config_error() -> None:
    refuses_cleanly("app: {match: {cmdline: 'a{4294967296}'}}\n")


def test_a_control_character_is_reported_with_its_line() -> None:
    refuses_cleanly("listen: ':1'\nlog: {level: 'info\x01'}\n")


def test_bytes_that_are_not_utf8_are_reported_with_their_line() -> None:
    refuses_cleanly(b"listen: ':1'\nlog: {level: '\xff'}\n")


def test_an_empty_top_level_key_is_reported_with_a_path_or_a_line() -> None:
    refuses_cleanly('"": 1\n')


ALIAS_BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                       + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
                       + ["checks: *a8"])


# The child prints what load() did; any other exception escapes as a traceback and a non-zero exit.
ALIAS_BOMB_CHILD = """
import json, sys
from agent.config import load
from agent.fields import ConfigError
try:
    config = load(sys.stdin.read(), {})
except ConfigError as error:
    print(json.dumps({"refused": error.problems}))
else:
    print(json.dumps({"loaded": len(config.checks)}))  # would fail the test: the bomb is no valid config
"""
BOMB_BOUND = 30.0  # seconds: a bomb expanded in full (10**9 nodes) takes hours; a guarded loader takes well under one


def test_a_small_alias_bomb_is_loaded_or_refused_within_seconds() -> None:
    proc = subprocess.Popen([sys.executable, "-c", ALIAS_BOMB_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        out, err = proc.communicate(ALIAS_BOMB, timeout=BOMB_BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"loading a {len(ALIAS_BOMB)}-byte alias bomb took over {BOMB_BOUND:g} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    answer = json.loads(out)
    # Not a valid config (its checks are a list): refused as a config error, each problem located.
    problems = [(path, message) for path, message in answer.get("refused", [])]
    assert ("checks" in dict(problems)) and not unlocated(ConfigError(problems)), answer


def test_url_credentials_with_an_authorization_header_are_refused_by_the_loader() -> None:
    with pytest.raises(ConfigError) as info:
        load("checks: {web: {type: http, url: 'http://u:p4ss@127.0.0.1:8080/', headers: {Authorization: Bearer x1y2z3}}}\n", {})
    assert any(path.startswith("checks.web") for path, _ in info.value.problems)
