"""Check-type plug-ins through real entry points: a distribution on PYTHONPATH, and the command in a subprocess.

A plug-in is a distribution (here a `*.dist-info` directory with METADATA and entry_points.txt, beside its module)
that registers a CheckType in the `sidecar_agent.checks` group. It is usable beside every built-in type, whether
the agent is installed (and registers its own types as entry points) or runs from a source tree that was never
installed; one that takes a built-in type's name is refused with exit 2, naming the distribution.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILTIN = ["dns", "exec", "file", "grpc", "heartbeat", "http", "postgres", "process", "redis", "tcp"]

PLUGIN = '''\
"""A third party's check type: `{name}` passes while a file exists."""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckType
from agent.fields import Field, Str


@dataclass(frozen=True)
class Params:
    path: str


class FileThere:
    def __init__(self, params: Params) -> None:
        self.params = params

    async def run(self) -> str:
        if not os.path.exists(self.params.path):
            raise CheckFailure(f"{{self.params.path}} is gone")
        return f"{{self.params.path}} is there"

    async def close(self) -> None:
        return None


def create(spec: CheckSpec[Params], ctx: CheckContext) -> FileThere:
    return FileThere(spec.params)


TYPE = CheckType(name="{name}", fields=(Field("path", Str(), doc="the file"),), params=Params, create=create,
                 is_dependency=lambda params: params.path.startswith("/mnt/"))
'''


def distribution(where: pathlib.Path, dist: str, module: str, type_name: str) -> pathlib.Path:
    """A distribution as pip leaves it in site-packages: its module, and NAME-VERSION.dist-info."""
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{module}.py").write_text(PLUGIN.format(name=type_name))
    info = where / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[sidecar_agent.checks]\n{type_name} = {module}:TYPE\n")
    return where


def agent(args: list[str], pythonpath: list[pathlib.Path], *, isolated_from: pathlib.Path | None = None,
          cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m agent ARGS` with these PYTHONPATH entries first; `isolated_from`: no site-packages but that one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIDECAR_AGENT_CONFIG")}
    command = [sys.executable, "-m", "agent", *args]
    if isolated_from is not None:
        command.insert(1, "-S")  # no site: the venv's site-packages (and the installed agent) are not on sys.path
        pythonpath = [*pythonpath, isolated_from]
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def config(tmp_path: pathlib.Path) -> pathlib.Path:
    there = tmp_path / "there"
    there.write_text("")
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(f"""\
        checks:
          theirs: {{type: ping, path: {there}}}
          web: {{type: http, url: http://127.0.0.1:9/healthz}}
          port: {{type: tcp, address: 127.0.0.1:9}}
          beat: {{type: heartbeat, ttl: 30s}}
        """))
    return path


def schema_types(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    variants = json.loads(proc.stdout)["properties"]["checks"]["additionalProperties"]["oneOf"]
    return sorted(v["properties"]["type"]["const"] for v in variants)


def test_a_plugin_type_is_usable_beside_every_builtin(tmp_path: pathlib.Path, config: pathlib.Path) -> None:
    plugins = distribution(tmp_path / "plugins", "acme-checks", "acme_checks", "ping")
    proc = agent(["check-config", str(config)], [plugins])
    assert proc.returncode == 0, proc.stderr
    assert "type: ping" in proc.stdout and "type: http" in proc.stdout and "ok, 4 checks" in proc.stderr
    assert schema_types(agent(["schema"], [plugins])) == sorted([*BUILTIN, "ping"])


def test_a_plugin_check_is_created_and_run_with_what_the_engine_passes(tmp_path: pathlib.Path, config: pathlib.Path) -> None:
    plugins = distribution(tmp_path / "plugins", "acme-checks", "acme_checks", "ping")
    code = textwrap.dedent(f"""\
        import asyncio, pathlib, time
        from agent.checks import CheckContext, load_type
        from agent.config import load
        from agent.process.reaper import Reaper
        spec = next(c for c in load(pathlib.Path({str(config)!r}).read_bytes(), {{}}).checks if c.name == "theirs")
        check = load_type(spec.type).create(spec, CheckContext(None, {{}}, time.monotonic, Reaper()))
        print(asyncio.run(check.run()))
        """)
    env = {**os.environ, "PYTHONPATH": str(plugins)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (proc.returncode, proc.stdout) == (0, f"{tmp_path / 'there'} is there\n"), proc.stderr


@pytest.mark.parametrize("args", [["check-config", "CONFIG"], ["schema"], ["run", "--config", "CONFIG", "--listen", "127.0.0.1:0"]])
def test_a_plugin_that_takes_a_builtin_name_is_refused_with_exit_2(tmp_path: pathlib.Path, config: pathlib.Path,
                                                                   args: list[str]) -> None:
    plugins = distribution(tmp_path / "plugins", "acme-http", "acme_http", "http")
    proc = agent([str(config) if a == "CONFIG" else a for a in args], [plugins])
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert proc.stderr.startswith("sidecar-agent: the check type 'http' of distribution 'acme-http 1.0', "
                                  "entry point 'http = acme_http:TYPE' in group sidecar_agent.checks takes the name of "
                                  "a built-in check type"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_two_plugins_that_register_one_name_are_refused(tmp_path: pathlib.Path, config: pathlib.Path) -> None:
    first = distribution(tmp_path / "one", "acme-checks", "acme_checks", "ping")
    second = distribution(tmp_path / "two", "other-checks", "other_checks", "ping")
    proc = agent(["check-config", str(config)], [first, second])
    assert proc.returncode == 2 and "two plug-ins register the check type 'ping'" in proc.stderr, proc.stderr
    assert "'acme-checks 1.0'" in proc.stderr and "'other-checks 1.0'" in proc.stderr


def test_lint_refuses_a_conflicting_plugin_with_exit_2(tmp_path: pathlib.Path) -> None:
    plugins = distribution(tmp_path / "plugins", "acme-http", "acme_http", "http")
    proc = agent(["lint", "tests/lint/corpus/combined/checkout.yaml"], [plugins])
    assert proc.returncode == 2 and "takes the name of a built-in check type" in proc.stderr, proc.stderr


@pytest.fixture
def source_tree(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A copy of agent/ that was never installed, and the dependencies without the installed agent's metadata."""
    tree = tmp_path / "src"
    shutil.copytree(ROOT / "agent", tree / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    deps = tmp_path / "deps"
    deps.mkdir()
    for packages in site.getsitepackages():
        for entry in pathlib.Path(packages).iterdir():
            if "sidecar" in entry.name.lower() or entry.suffix == ".pth" or (deps / entry.name).exists():
                continue
            (deps / entry.name).symlink_to(entry)
    return tree, deps


def test_a_source_tree_never_installed_keeps_its_builtins_beside_a_plugin(
        tmp_path: pathlib.Path, config: pathlib.Path, source_tree: tuple[pathlib.Path, pathlib.Path]) -> None:
    tree, deps = source_tree
    plugins = distribution(tmp_path / "plugins", "acme-checks", "acme_checks", "ping")
    where = subprocess.run([sys.executable, "-S", "-c", "import agent, importlib.metadata as m; print(agent.__file__); "
                            "print(len(m.entry_points(group='sidecar_agent.checks')))"],
                           cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join(map(str, [tree, plugins, deps]))},
                           capture_output=True, text=True, timeout=60, check=True)
    assert where.stdout.splitlines() == [str(tree / "agent" / "__init__.py"), "1"]  # the plug-in's entry point only
    proc = agent(["check-config", str(config)], [tree, plugins], isolated_from=deps, cwd=tmp_path)
    assert proc.returncode == 0 and "ok, 4 checks" in proc.stderr, proc.stderr
    assert schema_types(agent(["schema"], [tree, plugins], isolated_from=deps, cwd=tmp_path)) == sorted([*BUILTIN, "ping"])
    alone = agent(["schema"], [tree], isolated_from=deps, cwd=tmp_path)  # and without any plug-in at all
    assert schema_types(alone) == BUILTIN


def test_entry_points_are_read_on_first_use_not_at_import(tmp_path: pathlib.Path) -> None:
    code = textwrap.dedent("""\
        import importlib.metadata
        calls = []
        real = importlib.metadata.entry_points
        importlib.metadata.entry_points = lambda **kw: calls.append(kw) or real(**kw)
        import agent.cli, agent.config, agent.checks, agent.runtime.engine, agent.lint
        assert calls == [], calls
        agent.checks.type_names()
        assert calls == [{"group": "sidecar_agent.checks"}], calls
        """)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60, check=True)


def test_mypy_strict_checks_a_plugin_against_the_interface(tmp_path: pathlib.Path) -> None:
    """The interface is typed: a plug-in whose create or is_dependency disagrees with its params does not pass."""
    (tmp_path / "good.py").write_text(PLUGIN.format(name="ping"))
    (tmp_path / "wrong_spec.py").write_text(PLUGIN.format(name="ping").replace(
        "def create(spec: CheckSpec[Params]", "def create(spec: CheckSpec[str]").replace("FileThere(spec.params)", "FileThere(Params(spec.params))"))
    (tmp_path / "wrong_params.py").write_text(PLUGIN.format(name="ping").replace("params.path.startswith", "params.url.startswith"))
    (tmp_path / "wrong_context.py").write_text(PLUGIN.format(name="ping").replace(
        "return FileThere(spec.params)", "assert ctx.app is not None and ctx.reaper.watch(ctx.app.pid)\n    return FileThere(spec.params)"))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "good.py", "wrong_spec.py",
                           "wrong_params.py", "wrong_context.py"],
                          cwd=tmp_path, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300, check=False)
    errors = sorted({line.split(":")[0] for line in proc.stdout.splitlines() if ": error: " in line})
    assert errors == ["wrong_context.py", "wrong_params.py", "wrong_spec.py"], proc.stdout
    assert '"Params" has no attribute "url"' in proc.stdout and '"AppView" has no attribute "pid"' in proc.stdout, proc.stdout


@pytest.mark.parametrize("command", ["check-config", "lint"])
def test_the_validating_commands_refuse_a_conflicting_plugin_even_for_builtin_checks(tmp_path: pathlib.Path,
                                                                                     command: str) -> None:
    plugins = distribution(tmp_path / "plugins", "acme-http", "acme_http", "http")
    config = tmp_path / "agent.yaml"
    config.write_text("checks:\n  web: {type: http, url: 'http://127.0.0.1:9/healthz'}\n")
    target = str(config) if command == "check-config" else "tests/lint/corpus/good/regular-sidecar.yaml"
    proc = agent([command, target], [plugins])
    assert proc.returncode == 2 and "takes the name of a built-in check type" in proc.stderr, proc.stderr


def test_the_agent_of_builtin_checks_reads_no_plugin(tmp_path: pathlib.Path) -> None:
    # Reading the entry points costs memory in every pod; a built-in name always means the built-in type.
    code = textwrap.dedent("""\
        import sys
        from agent.config import load
        load("checks:\\n  web: {type: http, url: 'http://127.0.0.1:9/'}\\n  port: {type: tcp, address: '127.0.0.1:9'}\\n", {})
        print("importlib.metadata" in sys.modules)
        """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr
