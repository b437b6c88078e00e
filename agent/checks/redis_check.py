"""`redis`: PING answers PONG. Uses the `redis` package's asyncio client (the `redis` extra), loaded only when used."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agent.checks import CheckContext, CheckFailure, CheckTimeout, CheckType
from agent.fields import Bool, Field, Url, redact_url
from agent.units import format_duration, is_loopback_host


@dataclass(frozen=True)
class Params:
    url: str
    reuse_connection: bool = True
    tls_verify: bool = True


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
        if self.params.url.startswith("rediss://") and not self.params.tls_verify:
            options["ssl_cert_reqs"] = "none"
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
    if isinstance(cause, OSError):
        return f"cannot connect to {where}: {cause.strerror or cause}"
    return f"connection to {where} failed: {exc}"


def _create(spec: Any, ctx: CheckContext) -> RedisCheck:
    return RedisCheck(spec.params, spec.timeout)


TYPE = CheckType(
    name="redis",
    fields=(
        Field("url", Url(["redis", "rediss"]), doc="redis://[user:password@]host:port/db, or rediss:// for TLS"),
        Field("reuse_connection", Bool(), True, "keep one connection and PING it; false connects afresh each run"),
        Field("tls_verify", Bool(), True, "verify the server's certificate for rediss://"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(urlsplit(params.url).hostname or "localhost"),
    requires=("redis",),
    extra="redis",
)
