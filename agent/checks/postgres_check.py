"""`postgres`: a query (`SELECT 1`) succeeds. Uses asyncpg (the `postgres` extra), loaded only when used."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckTimeout, CheckType
from agent.fields import REDACTED, Bool, Field, Invalid, Kind, Problems, Str, redact_url, split_secret_url
from agent.units import format_duration, is_loopback_host

_KV = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
# The libpq keywords the check passes on to asyncpg; connect_timeout gives way to the check's own timeout.
_KEYWORDS = frozenset({"host", "hostaddr", "port", "user", "password", "dbname", "sslmode", "sslrootcert",
                       "sslcert", "sslkey", "application_name", "connect_timeout"})


def parse_keyword_dsn(text: str) -> dict[str, str]:
    """libpq's `key=value key='quoted value'` form as a dict; ValueError on anything else."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text.rstrip()):
        match = _KV.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot read the DSN after its first {pos} characters")
        key, value = match.group(1), match.group(2)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key] = value
        pos = match.end()
    return out


class Dsn(Kind):
    """A PostgreSQL DSN: a postgres:// URL or libpq key=value pairs; the password is a secret."""

    def shape(self) -> str:
        return "DSN (password secret)"

    def parse(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"expected a DSN like postgres://user@host:5432/db or 'host=db dbname=app', got {type(value).__name__}")
        if value.startswith(("postgres://", "postgresql://")):
            split_secret_url(value, problems)  # a socket URL may name no host, so not the Url kind
            return value
        try:
            pairs = parse_keyword_dsn(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if pairs.get("password"):
            problems.secrets.add(pairs["password"])
        unknown = sorted(set(pairs) - set(_KEYWORDS))
        if unknown:
            raise Invalid(f"unsupported DSN keyword {unknown[0]!r}; known: {', '.join(sorted(_KEYWORDS))}")
        return value

    def dump(self, value: Any) -> Any:
        if value.startswith(("postgres://", "postgresql://")):
            return redact_url(value)
        pairs = parse_keyword_dsn(value)
        return " ".join(f"{k}={REDACTED if k == 'password' else v}" for k, v in pairs.items())

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": 1}


def dsn_host(dsn: str) -> str:
    if dsn.startswith(("postgres://", "postgresql://")):
        return urlsplit(dsn).hostname or "localhost"
    pairs = parse_keyword_dsn(dsn)
    host = pairs.get("hostaddr") or pairs.get("host") or "localhost"
    return "localhost" if host.startswith("/") else host  # a unix socket directory is local


def connect_arguments(dsn: str) -> dict[str, Any]:
    """asyncpg.connect() keyword arguments for either DSN form.

    The key=value form becomes a URL whose query carries every keyword, so that asyncpg reads sslmode,
    sslrootcert, sslcert and sslkey exactly as it does from a URL.
    """
    if dsn.startswith(("postgres://", "postgresql://")):
        return {"dsn": dsn}
    pairs = parse_keyword_dsn(dsn)
    if "hostaddr" in pairs:  # asyncpg has no hostaddr: the address is where it connects
        pairs["host"] = pairs.pop("hostaddr")
    password = pairs.pop("password", None)  # an argument of its own: never part of a string a library may quote
    query = {key: value for key, value in pairs.items() if key != "connect_timeout"}
    return {"dsn": "postgresql://?" + urlencode(query), "password": password}


@dataclass(frozen=True)
class Params:
    dsn: str
    query: str = "SELECT 1"
    reuse_connection: bool = True


class PostgresCheck:
    def __init__(self, params: Params, timeout: float) -> None:
        self.params, self.timeout = params, timeout
        self.where = dsn_host(params.dsn)
        self.conn: Any = None

    async def run(self) -> str:
        import asyncpg

        conn, keep = self.conn, False
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(**connect_arguments(self.params.dsn), timeout=self.timeout,
                                             command_timeout=self.timeout)
            value = await conn.fetchval(self.params.query, timeout=self.timeout)
            keep = self.params.reuse_connection
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            raise CheckFailure(f"authentication failed at {self.where}: {exc.__class__.__name__}") from None
        except asyncpg.InvalidCatalogNameError as exc:
            raise CheckFailure(f"{exc} (at {self.where})") from None
        except asyncpg.PostgresError as exc:
            raise CheckFailure(f"query failed: {exc.__class__.__name__}: {exc}") from None
        except ConnectionRefusedError:
            raise CheckFailure(f"connection refused by {self.where}") from None
        except ssl.SSLCertVerificationError as exc:
            raise CheckFailure(f"TLS certificate of {self.where} not trusted: {exc.verify_message}; is sslrootcert "
                               "the CA that signed it, and is the host in the certificate?") from None
        except (TimeoutError, asyncpg.exceptions.QueryCanceledError):
            raise CheckTimeout(f"timed out after {format_duration(self.timeout)}") from None
        except (OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError) as exc:
            raise CheckFailure(f"cannot talk to {self.where}: {exc}") from None
        finally:
            # A failed or cancelled run leaves the connection in an unknown state: drop it.
            self.conn = conn if keep else None
            if not keep and conn is not None:
                conn.terminate()
        return f"{self.params.query} -> {value!r}"[:120]

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.terminate()


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> PostgresCheck:
    return PostgresCheck(spec.params, spec.timeout)


TYPE = CheckType(
    name="postgres",
    fields=(
        Field("dsn", Dsn(), doc="postgres://user:password@host:5432/db?sslmode=require, or 'host=db dbname=app ...'"),
        Field("query", Str(), doc="the query to run"),
        Field("reuse_connection", Bool(), doc="keep one connection and query on it; false connects afresh each run"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(dsn_host(params.dsn)),
    requires=("asyncpg",),
    extra="postgres",
)
