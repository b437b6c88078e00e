"""The command line: run, exec, wait, check-config, schema, lint, webhook.

Exit 0 clean, 1 internal error, 2 usage, config or plug-in error; exec passes the app's own code through.
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
from typing import Any, NoReturn

import yaml

from agent import DEFAULT_KUBERNETES, IMAGE, __version__, checks, logs
from agent.checks import PluginError
from agent.config import ANY_HOST, CONFIG_TEXT_ENV, DEFAULT_CONFIG, DEFAULT_LISTEN, Config, ConfigError, dump, json_schema, load
from agent.kube.drain import Drain
from agent.kube.versions import FALLBACK, Chosen, Source
from agent.probes import Probe
from agent.runtime import threads, watchdog
from agent.units import format_address, parse_address, parse_duration

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
KUBERNETES = ".".join(map(str, DEFAULT_KUBERNETES))  # the default of --kubernetes-version


class UsageError(Exception):
    """Bad input from the user: printed as is, exit code 2."""


DRAINS = [drain.value for drain in Drain]
DRAIN_HELP = ("how the drain ends: timer (drain_delay; the app's preStop sleeps) or endpoints (when the pod has left its "
              "EndpointSlices: the downward-API env added, the app's preStop waits on /prestop/wait); a pod's "
              "sidecar-agent.io/drain annotation overrides it (default: %(default)s)")

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
    wait.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_LISTEN[1]}/{Probe.READINESS.path}",
                      help="readiness URL; one without a path means that agent's /readyz (default: %(default)s)")
    wait.add_argument("--timeout", default="60s", help="give up after this long (default: %(default)s)")
    check = sub.add_parser("check-config", help="validate a config and print it normalised, secrets redacted")
    check.add_argument("file")
    sub.add_parser("schema", help="print the config's JSON Schema")
    lint = sub.add_parser("lint", help="report the probe and shutdown mistakes in workload manifests; exit 1 on an error")
    lint.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="Kubernetes YAML files, or directories of them")
    lint.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: %(default)s)")
    lint.add_argument("--agent-config", metavar="FILE", help="the agent's config (default: the ConfigMap the pod mounts)")
    inject = sub.add_parser("inject", help="add the agent to every pod template in Kubernetes YAML, printed on stdout")
    inject.add_argument("paths", nargs="*", metavar="FILE|DIR|-", help="YAML files, directories of them, or - for stdin "
                        "(the default)")
    inject.add_argument("--kubernetes-version", metavar="X.Y", help=f"the version of the OLDEST KUBELET in the cluster "
                        "(not the API server's), which decides the sidecar mode: a native sidecar from 1.29, a preStop "
                        f"sleep from 1.30 (default: {KUBERNETES})")
    inject.add_argument("--image", default=IMAGE, help="the agent's image (default: %(default)s)")
    inject.add_argument("--remove", action="store_true", help="take an injection back out, restoring the pod templates")
    inject.add_argument("--drain", choices=DRAINS, default=Drain.TIMER.value, help=DRAIN_HELP)
    stop = sub.add_parser("stop", help="start the agent's ordered stop over loopback and return (a native sidecar's "
                          "preStop hook): the agent drains, then serves until its SIGTERM")
    stop.add_argument("--url", help="the agent's stop URL (default: /quitquitquit?exit=sigterm on loopback at the port "
                      f"of $SIDECAR_AGENT_LISTEN, else {DEFAULT_LISTEN[1]})")
    hook = sub.add_parser("webhook", help="serve the mutating admission webhook that adds the agent to new pods")
    hook.add_argument("--tls-cert", required=True, metavar="FILE", help="the serving certificate (PEM, chain first)")
    hook.add_argument("--tls-key", required=True, metavar="FILE", help="its private key (PEM)")
    hook.add_argument("--listen", default="[::]:8443", metavar="ADDR", help="address to serve on (default: %(default)s, "
                      "IPv4 and IPv6)")
    hook.add_argument("--kubernetes-version", metavar="X.Y|auto", help="the version of the OLDEST KUBELET in the "
                      "cluster (not the API server's), which decides the sidecar mode: a native sidecar from 1.29, a "
                      "preStop sleep from 1.30; auto: read from the nodes (the service account may list nodes), again "
                      f"every minute, and {FALLBACK[0]}.{FALLBACK[1]}'s mode, which works on every kubelet, until a read "
                      f"succeeds and whenever one fails (default: {KUBERNETES})")
    hook.add_argument("--image", default=IMAGE, help="the agent's image (default: %(default)s)")
    hook.add_argument("--drain", choices=DRAINS, default=Drain.TIMER.value, help=DRAIN_HELP)
    return parser


def read_config(path: str | None, env: Mapping[str, str], *, app_is_child: bool = False) -> Config:
    """Load the config at `path`, else the one in $SIDECAR_AGENT_CONFIG_YAML (injected pods), else the embedded default."""
    if path is None and env.get(CONFIG_TEXT_ENV):
        try:
            return load(env[CONFIG_TEXT_ENV], env, app_is_child=app_is_child)
        except ConfigError as exc:
            raise UsageError("\n".join(f"{CONFIG_TEXT_ENV}: {p}: {m}" if p else f"{CONFIG_TEXT_ENV}: {m}"
                                       for p, m in exc.problems)) from None
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
            config = dataclasses.replace(config, listen=parse_address(listen, default_host=ANY_HOST, any_port=True))
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


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> NoReturn:
    _serve(args, env, command=None)


def cmd_exec(args: argparse.Namespace, env: Mapping[str, str]) -> NoReturn:
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("sidecar-agent: exec needs a command: sidecar-agent exec [--config FILE] -- CMD [ARG...]")
    _serve(args, env, command=command)


def _serve(args: argparse.Namespace, env: Mapping[str, str], command: list[str] | None) -> NoReturn:
    """Run the agent until it stops, then end the process with its exit code (os._exit: it never returns)."""
    from agent.process.supervisor import SpawnError
    from agent.runtime.daemon import serve  # the server stack loads only for commands that serve

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
    checks.type_names()  # the validating commands read the plug-ins even for built-in types: a bad one is refused here
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

    checks.type_names()  # as check-config: a plug-in that takes a built-in's name is refused, not silently shadowed
    try:
        result = lint_paths(args.paths, args.agent_config)
    except InputError as exc:
        raise UsageError(f"sidecar-agent lint: {exc}") from None
    sys.stdout.write(as_json(result) if args.format == "json" else text(result))
    return 1 if result.failed else EXIT_OK


def parse_kubernetes_version(text: str) -> tuple[int, int]:
    """(major, minor) from `X.Y`; UsageError otherwise."""
    major, dot, minor = text.strip().removeprefix("v").partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise UsageError(f"sidecar-agent: --kubernetes-version: expected X.Y like 1.33, got {text!r}")
    return int(major), int(minor)


def chosen_kubernetes(text: str | None) -> Chosen:
    """The version of --kubernetes-version X.Y (or the default when not given) and where it came from."""
    if text is None:
        return Chosen(DEFAULT_KUBERNETES, Source.DEFAULT)
    return Chosen(parse_kubernetes_version(text), Source.FLAG)


def cmd_webhook(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from agent.webhook import server as webhook  # the server stack and jsonpatch load only for this command

    auto = (args.kubernetes_version or "").strip() == "auto"
    chosen = None if auto else chosen_kubernetes(args.kubernetes_version)
    try:
        host, port = parse_address(args.listen, default_host=ANY_HOST, any_port=True)
    except ValueError as exc:
        raise UsageError(f"sidecar-agent: --listen: {exc}") from None
    if not args.image.strip():
        raise UsageError("sidecar-agent: --image: empty")
    try:
        webhook.server_context(args.tls_cert, args.tls_key)
    except webhook.CertificateError as exc:
        raise UsageError(f"sidecar-agent: --tls-cert/--tls-key: {exc}") from None
    from agent.inject import Options

    api = None
    if auto:
        from agent.kube.api import in_cluster
        from agent.kube.nodes import NodeListError

        try:
            api = in_cluster(env)
        except NodeListError as exc:
            raise UsageError(f"sidecar-agent: --kubernetes-version auto: {exc}") from None
    options = Options(image=args.image.strip(), drain=Drain(args.drain))
    if chosen is not None:
        options = dataclasses.replace(options, kubernetes_version=chosen.version, kubernetes_source=chosen.source)
    settings = webhook.Settings(cert=args.tls_cert, key=args.tls_key, host=host, port=port, options=options)
    kubelets = None
    if api is not None:
        from agent.kube.nodes import kubelet_versions
        from agent.webhook.kubelets import OldestKubelet

        kubelets = OldestKubelet(lambda: kubelet_versions(api))
    mutate, refusals = webhook.injection(settings, kubelets)
    logs.setup()
    try:
        code = _run_loop(webhook.serve(settings, mutate, refusals, kubelets))
    except OSError as exc:
        logging.getLogger("agent").error("cannot listen on %s: %s", args.listen, exc.strerror or exc)
        code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def cmd_inject(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from agent.inject import Options
    from agent.inject.documents import run
    from agent.lint import InputError

    if (args.kubernetes_version or "").strip() == "auto":
        raise UsageError("sidecar-agent inject: --kubernetes-version auto is the webhook's (it reads the nodes); "
                         "inject works offline: give the oldest kubelet's X.Y")
    chosen = chosen_kubernetes(args.kubernetes_version)
    try:
        report = run(args.paths, Options(image=args.image, kubernetes_version=chosen.version,
                                         kubernetes_source=chosen.source, drain=Drain(args.drain)), undo=args.remove)
    except InputError as exc:
        raise UsageError(f"sidecar-agent inject: {exc}") from None
    sys.stdout.write(report.text)
    for note in report.notes:
        print(f"sidecar-agent inject: {note}", file=sys.stderr)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from agent.waiting import request_stop

    url = args.url
    if url is None:
        host, port = DEFAULT_LISTEN
        if env.get("SIDECAR_AGENT_LISTEN"):
            try:
                host, port = parse_address(env["SIDECAR_AGENT_LISTEN"], default_host=ANY_HOST, any_port=True)
            except ValueError as exc:
                raise UsageError(f"sidecar-agent stop: SIDECAR_AGENT_LISTEN: {exc}") from None
        # Loopback of the listener's family: an agent on [::1] only is not reached on 127.0.0.1; [::] is dual-stack.
        # exit=sigterm: this is a native sidecar's preStop, and the kubelet sends the agent SIGTERM once the app
        # containers have exited; the agent serves until then rather than exit while the app still stops.
        url = f"http://{format_address('::1' if host == '::1' else '127.0.0.1', port)}/quitquitquit?exit=sigterm"
    accepted, report = request_stop(url)
    print(report, file=sys.stdout if accepted else sys.stderr)
    return EXIT_OK if accepted else 1




COMMANDS = {"run": cmd_run, "exec": cmd_exec, "wait": cmd_wait, "check-config": cmd_check_config, "schema": cmd_schema,
            "lint": cmd_lint, "inject": cmd_inject, "stop": cmd_stop, "webhook": cmd_webhook}


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of `sidecar-agent` and `python -m agent`; returns the exit code.

    `run` and `exec` never return: once the agent has stopped they end the process with `os._exit` (see `_serve`),
    so that no stuck worker thread can hold it. A usage or config error found before serving still returns 2.
    """
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    try:
        return COMMANDS[args.command](args, env)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except PluginError as exc:  # an installed plug-in the registry refuses: fixed by installing, so a usage error
        print(f"sidecar-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        print(f"sidecar-agent: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if env.get("SIDECAR_AGENT_DEBUG"):
            raise
        return EXIT_INTERNAL
