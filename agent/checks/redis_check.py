"""`redis`: PING answers PONG. Uses the `redis` package's asyncio client (the `redis` extra), loaded only when used."""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckTimeout, CheckType
from agent.fields import Bool, Field, Str, Url, optional, redact_url
from agent.units import format_duration, is_loopback_host


@dataclass(frozen=True)
class Params:
    url: str
    reuse_connection: bool = True
    tls_verify: bool = True
    ca_file: str | None = None


class RedisCheck:
    def __init__(self, params: Params, timeout: float) -> None:
        self.params, self.timeout = params, timeout
        self.where = redact_url(params.url)
        self.client: Any = None

    def _connect(self) -> Any:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside the client: the engine's interval and thresholds are the retry policy.
        options: dict[str, Any] = {"socket_connect_timeout": self.timeout, "socket_timeout": self.timeout,
                                   "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
        if self.params.url.startswith("rediss://"):
            if not self.params.tls_verify:
                options["ssl_cert_reqs"] = "none"
            elif self.params.ca_file:
                try:  # the client would report a missing file as a failed connection
                    with open(self.params.ca_file, "rb"):
                        pass
                except OSError as exc:
                    raise CheckFailure(f"cannot read ca_file {self.params.ca_file}: {exc.strerror or exc}") from None
                options["ssl_ca_certs"] = self.params.ca_file
        return redis.asyncio.Redis.from_url(self.params.url, single_connection_client=True, **options)

    async def run(self) -> str:
        import redis.exceptions as errors

        client = self.client or self._connect()
        keep = False
        try:
            answer = await client.ping()
            keep = self.params.reuse_connection
        except errors.AuthenticationError:
            raise CheckFailure(f"authentication failed at {self.where}") from None
        except errors.ResponseError as exc:
            text = str(exc)
            if text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                raise CheckFailure(f"authentication failed at {self.where}: {text.split(' ')[0]}") from None
            raise CheckFailure(f"PING refused: {text}") from None
        except errors.TimeoutError:
            raise CheckTimeout(f"timed out after {format_duration(self.timeout)}") from None
        except (errors.ConnectionError, OSError) as exc:
            raise CheckFailure(_connection_reason(exc, self.where)) from None
        finally:
            # A failed or cancelled run leaves the connection in an unknown state: drop it.
            if keep:
                self.client = client
            else:
                self.client = None
                await _close(client)
        if answer is not True:
            raise CheckFailure(f"PING answered {answer!r}, not PONG")
        return "PONG"

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await _close(client)


async def _close(client: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is being thrown away
        await client.aclose()


def _connection_reason(exc: BaseException, where: str) -> str:
    """The cause a person can act on, from the OS error under the client's wrapper (redis-py hides it)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"TLS certificate of {where} not trusted: {cause.verify_message}; "
                "is ca_file the CA that signed it, and is the host in the certificate?")
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake with {where} failed: {cause.reason or cause}; does the server speak TLS on this port?"
    if isinstance(cause, OSError):
        return f"cannot connect to {where}: {cause.strerror or cause}"
    return f"connection to {where} failed: {exc}"


def _validate(params: Params) -> str | None:
    if params.ca_file and not params.url.startswith("rediss://"):
        return "ca_file applies only to TLS: use a rediss:// url, or remove it"
    if params.ca_file and not params.tls_verify:
        return "ca_file has no use with tls_verify: false: remove one of them"
    return None


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> RedisCheck:
    return RedisCheck(spec.params, spec.timeout)


TYPE = CheckType(
    name="redis",
    fields=(
        Field("url", Url(["redis", "rediss"]), doc="redis://[user:password@]host:port/db, or rediss:// for TLS"),
        Field("reuse_connection", Bool(), doc="keep one connection and PING it; false connects afresh each run"),
        Field("tls_verify", Bool(), doc="verify the server's certificate for rediss://"),
        optional("ca_file", Str(), "a PEM bundle of the CAs to trust for rediss:// (default: the system's roots)"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(urlsplit(params.url).hostname or "localhost"),
    validate=_validate,
    requires=("redis",),
    extra="redis",
)
