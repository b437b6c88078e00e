"""The command line: run, exec, wait, check-config, schema, lint.

Exit 0 clean, 1 internal error, 2 usage or config error; exec passes the app's own code through.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import yaml

from agent import __version__, logs, threads, watchdog
from agent.config import DEFAULT_CONFIG, Config, ConfigError, dump, json_schema, load
from agent.units import parse_address, parse_duration

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as is, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar-agent", description="A health-and-shutdown sidecar for Kubernetes pods.")
    parser.add_argument("--version", action="version", version=f"sidecar-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", help="config file (default: $SIDECAR_AGENT_CONFIG, else the embedded default)")
    run.add_argument("--listen", help="address to serve on, overriding the config (default: $SIDECAR_AGENT_LISTEN)")
    exe = sub.add_parser("exec", help="run the agent with the app as its child: signals relayed, zombies reaped, "
                         "the app's exit code passed through")
    exe.add_argument("--config", help="config file (default: $SIDECAR_AGENT_CONFIG, else the embedded default)")
    exe.add_argument("--listen", help="address to serve on, overriding the config (default: $SIDECAR_AGENT_LISTEN)")
    exe.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]", help="the app to run")
    wait = sub.add_parser("wait", help="block until the agent reports ready; exit 1 on timeout")
    wait.add_argument("--url", default="http://127.0.0.1:8686/readyz", help="readiness URL (default: %(default)s)")
    wait.add_argument("--timeout", default="60s", help="give up after this long (default: %(default)s)")
    check = sub.add_parser("check-config", help="validate a config and print it normalised, secrets redacted")
    check.add_argument("file")
    sub.add_parser("schema", help="print the config's JSON Schema")
    lint = sub.add_parser("lint", help="report the probe and shutdown mistakes in workload manifests; exit 1 on an error")
    lint.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="Kubernetes YAML files, or directories of them")
    lint.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: %(default)s)")
    lint.add_argument("--agent-config", metavar="FILE", help="the agent's config (default: the ConfigMap the pod mounts)")
    return parser


def read_config(path: str | None, env: Mapping[str, str], *, app_is_child: bool = False) -> Config:
    """Load the config at `path`, or the embedded default when there is none."""
    if path is None:
        return load(DEFAULT_CONFIG, env, app_is_child=app_is_child)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UsageError(f"sidecar-agent: cannot read config {path}: {exc.strerror or exc}") from None
    try:
        return load(data, env, app_is_child=app_is_child)
    except ConfigError as exc:
        raise UsageError("\n".join(f"{path}: {p}: {m}" if p else f"{path}: {m}" for p, m in exc.problems)) from None


def _with_overrides(config: Config, listen: str | None, env: Mapping[str, str]) -> Config:
    if listen:
        try:
            config = dataclasses.replace(config, listen=parse_address(listen, default_host="0.0.0.0", any_port=True))
        except ValueError as exc:
            raise UsageError(f"sidecar-agent: --listen: {exc}") from None
    if config.admin.token_file:
        try:
            with open(config.admin.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"sidecar-agent: admin.token_file: cannot read {config.admin.token_file}: {exc}") from None
        if not token:
            raise UsageError(f"sidecar-agent: admin.token_file: {config.admin.token_file} is empty")
        config = dataclasses.replace(config, admin=dataclasses.replace(config.admin, token=token),
                                     secrets=config.secrets | {token})
    return config


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _serve(args, env, command=None)


def cmd_exec(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("sidecar-agent: exec needs a command: sidecar-agent exec [--config FILE] -- CMD [ARG...]")
    return _serve(args, env, command=command)


def _serve(args: argparse.Namespace, env: Mapping[str, str], command: list[str] | None) -> int:
    from agent.daemon import serve  # the server stack loads only for commands that serve
    from agent.supervisor import SpawnError

    path = args.config or env.get("SIDECAR_AGENT_CONFIG")
    listen = args.listen or env.get("SIDECAR_AGENT_LISTEN")

    def reload() -> Config:
        """Read the config again (SIGHUP, POST /admin/reload); raises UsageError with every problem."""
        fresh = read_config(path, os.environ, app_is_child=command is not None)
        return _with_overrides(fresh, listen, os.environ)

    config = _with_overrides(read_config(path, env, app_is_child=command is not None), listen, env)
    scrub = logs.setup(config.log.level, config.log.format, logs.Scrubber(config.secrets))
    try:
        code = _run_loop(serve(config, scrub, command, reload=reload))
    except SpawnError as exc:
        logging.getLogger("agent").error("cannot start the app: %s", exc)
        code = exc.code
    except OSError as exc:
        host, port = config.listen
        logging.getLogger("agent").error("cannot listen on %s:%s: %s", host, port, exc.strerror or exc)
        code = EXIT_INTERNAL
    # Exit now: a thread stuck in getaddrinfo (a dependency's DNS hangs) must not hold the process,
    # which the interpreter's exit would do by joining every worker thread.
    threads.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run without its closing steps: the caller ends the process with os._exit right after.

    Closing would wait for no thread, but it would put every signal back to its default action, and a
    late SIGINT or SIGTERM in the moment before the exit would end the process by that signal instead
    of with the agent's exit code. Executor threads die with the process.
    """
    loop = watchdog.new_event_loop()  # its selector measures the lag: no timer wakes an idle agent
    try:
        return loop.run_until_complete(main)
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())


def cmd_wait(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from agent.waiting import wait_ready

    try:
        timeout = parse_duration(args.timeout)
    except ValueError:
        raise UsageError(f"sidecar-agent: --timeout: expected a duration like 30s, got {args.timeout!r}") from None
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"sidecar-agent: --url: expected an http:// URL, got {args.url!r}")
    ready, report = wait_ready(args.url, timeout)
    print(report, file=sys.stdout if ready else sys.stderr)
    return EXIT_OK if ready else 1


def cmd_check_config(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = read_config(args.file, env)
    sys.stdout.write(yaml.safe_dump(dump(config), sort_keys=False, default_flow_style=False))
    print(f"{args.file}: ok, {len(config.checks)} checks", file=sys.stderr)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_lint(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from agent.lint import InputError, lint_paths
    from agent.lint.render import as_json, text

    try:
        result = lint_paths(args.paths, args.agent_config)
    except InputError as exc:
        raise UsageError(f"sidecar-agent lint: {exc}") from None
    sys.stdout.write(as_json(result) if args.format == "json" else text(result))
    return 1 if result.failed else EXIT_OK


COMMANDS = {"run": cmd_run, "exec": cmd_exec, "wait": cmd_wait, "check-config": cmd_check_config, "schema": cmd_schema,
            "lint": cmd_lint}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of `sidecar-agent` and `python -m agent`; returns the exit code."""
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    try:
        return COMMANDS[args.command](args, env)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        print(f"sidecar-agent: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if env.get("SIDECAR_AGENT_DEBUG"):
            raise
        return EXIT_INTERNAL
