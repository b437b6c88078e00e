"""Reading command lines: shell scripts split into simple commands, interpreters, and the hosts a command reaches."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from agent.kube.facts import AGENT_PORT, LAUNCHERS, SHELLS
from agent.probes import Probe
from agent.units import is_loopback_host

WRAPPERS = frozenset({"env", "exec", "nice", "nohup", "command", "timeout", "time"})
PYTHON = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|sidecar-agent)$")
URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?:[^@/\s]*@)?(?P<host>\[[^\]]*\]|[^:/\s?#]+)(?::(?P<port>\d+))?"
                 r"(?P<path>/[^\s?#]*)?", re.IGNORECASE)
# Clients that talk to a server, and the option naming its host (absent: they use a local default).
CLIENT_HOST_FLAGS = {
    "pg_isready": ("-h", "--host"), "psql": ("-h", "--host"), "redis-cli": ("-h",), "mysqladmin": ("-h", "--host"),
    "mysql": ("-h", "--host"), "mongo": ("--host",), "mongosh": ("--host",), "grpc_health_probe": ("-addr", "--addr"),
    "grpcurl": (), "cqlsh": (), "nc": (), "ncat": (), "netcat": (),
}
CLIENT_PORT_FLAGS = ("-p", "--port")
DNS_TOOLS = frozenset({"nslookup", "dig", "host"})


def split_script(script: str) -> list[list[str]]:
    """A shell script as its simple commands (split at ;, &&, ||, | and newlines); unparsable text yields words."""
    try:
        lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
    except ValueError:
        words = script.split()
    commands: list[list[str]] = [[]]
    for word in words:
        if word and set(word) <= set(";&|()"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def _shell_script(words: Sequence[str]) -> str | None:
    """The SCRIPT of `sh -c SCRIPT`, or None when the words do not run a shell that way."""
    if words and posixpath.basename(words[0]) in SHELLS:
        for i, word in enumerate(words[1:], 1):
            if word.startswith("-") and "c" in word[1:] and i + 1 < len(words):
                return words[i + 1]
    return None


def simple_commands(argv: Sequence[str]) -> list[list[str]]:
    """The simple commands an argv runs: `sh -c SCRIPT` is read as the script it runs."""
    words = list(argv)
    script = _shell_script(words)
    if script is not None:
        return split_script(script)
    return [words] if words else []


def program(command: Sequence[str]) -> tuple[str, list[str]]:
    """The program a simple command starts (past `env X=1`, `exec`, `timeout 5`...) and its arguments."""
    words = list(command)
    while words:
        head = posixpath.basename(words[0])
        if "=" in words[0] and not words[0].startswith("-") and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        elif head in WRAPPERS:
            words = words[1:]
            while words and (words[0].startswith("-") or (head == "timeout" and words[0][:1].isdigit())):
                words = words[1:]
        else:
            return head, words[1:]
    return "", []


def wrapper(argv: Sequence[str]) -> str | None:
    """How an argv keeps the stop signal from the app it starts, if it does: a shell running more than one
    command without `exec` before the last, a shell script, or a launcher (npm, yarn). None when it does not."""
    words = list(argv)
    if not words:
        return None
    head = posixpath.basename(words[0])
    script = _shell_script(words)
    if script is not None:  # sh -c SCRIPT
        lines = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
        last = (split_script(lines[-1]) or [[]])[-1] if lines else []
        name, _ = program(last)
        if name in LAUNCHERS:
            return f"`{head} -c` runs {name}, a launcher that does not pass the stop signal on"
        if last[:1] != ["exec"] and (len(lines) > 1 or len(split_script(script)) > 1):
            return f"`{head} -c` runs several commands and waits for the last instead of replacing itself with it (exec)"
        return None
    if head in SHELLS:
        script = next((w for w in words[1:] if not w.startswith("-")), None)
        return f"the shell script {script} runs the app as its child, unless it starts the app with exec" if script else None
    if head.endswith(".sh"):
        return f"the shell script {words[0]} runs the app as its child, unless it starts the app with exec"
    name, _ = program(words)
    if name in LAUNCHERS:
        return f"{name} runs the app as its child and does not pass the stop signal on"
    return None


def starts_python(argv: Sequence[str]) -> str | None:
    """The interpreter an argv starts (python3, a *.py script, or the sidecar-agent CLI), if any."""
    for command in simple_commands(argv):
        name, _ = program(command)
        if PYTHON.match(name) or name.endswith(".py"):
            return name
    return None


@dataclass(frozen=True)
class Target:
    """Where a command connects: a host (\"\" when local), a port, and the HTTP path if it is a URL."""

    host: str
    port: int | None
    path: str | None
    program: str


def is_local(host: str) -> bool:
    """A host a client reaches on its own machine: a loopback one, or an any-address (which connects locally)."""
    return is_loopback_host(host) or host.strip("[]") in ("0.0.0.0", "::")


def sleeps_first(argv: Sequence[str]) -> int | None:
    """The seconds a command sleeps before anything else (`sleep 10`, `sh -c "sleep 10; nginx -s quit"`), if it does."""
    commands = simple_commands(argv)
    if not commands:
        return None
    name, args = program(commands[0])
    if name == "sleep" and len(args) == 1 and args[0].rstrip("s").isdigit():
        return int(args[0].rstrip("s"))
    return None


def _host_port(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host.strip("[]") or "localhost", int(port)
    return text.strip("[]"), None


def targets(argv: Sequence[str]) -> list[Target]:
    """Every server an exec command talks to, as far as can be read from its words."""
    found: list[Target] = []
    for command in simple_commands(argv):
        name, args = program(command)
        waits = name == "sidecar-agent" and args[:1] == ["wait"]
        for word in args:
            for match in URL.finditer(word):
                url_host = match.group("host").strip("[]")
                url_port = int(match.group("port")) if match.group("port") else None
                path = match.group("path") or "/"
                if waits and path == "/":  # `sidecar-agent wait` takes an agent's bare address for its readiness
                    path = f"/{Probe.READINESS.path}"
                found.append(Target("" if is_local(url_host) else url_host, url_port, path, name))
        if waits and option(args, ("--url",)) is None:  # its default URL is the agent's readiness
            found.append(Target("", AGENT_PORT, f"/{Probe.READINESS.path}", name))
        if name == "sidecar-agent" and args[:1] == ["stop"] and option(args, ("--url",)) is None:
            found.append(Target("", AGENT_PORT, "/quitquitquit", name))  # its default URL: the agent's stop, on loopback
        if name in DNS_TOOLS:
            found.append(Target(next((a for a in args if not a.startswith("-")), "a DNS server"), None, None, name))
        if name not in CLIENT_HOST_FLAGS:
            continue
        host, port = option(args, CLIENT_HOST_FLAGS[name]), option(args, CLIENT_PORT_FLAGS)
        if name in ("nc", "ncat", "netcat", "cqlsh", "grpcurl"):
            positional = [a for a in args if not a.startswith("-") and not URL.match(a)]
            host = positional[0] if positional else None
            port = positional[1] if len(positional) > 1 else port
        if host is None and port is None:
            continue
        host_text, host_port = _host_port(host or "localhost")
        number = int(port) if port and port.isdigit() else host_port
        found.append(Target("" if is_local(host_text) else host_text, number, None, name))
    return found


def option(args: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of the first of `flags` in a command's arguments: `--flag VALUE`, `--flag=VALUE`, or `-fVALUE` for a
    one-letter flag; None when absent, or only after `--` (where the words are no longer options)."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
            if len(flag) == 2 and arg.startswith(flag) and len(arg) > 2 and not arg.startswith("--"):
                return arg[2:]
    return None
