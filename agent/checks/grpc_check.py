"""`grpc`: grpc.health.v1.Health/Check on `address` answers SERVING, for `service` or (by default) the whole server.

grpcio is heavy: it is imported when a check is created, never when this module is imported (config
validation imports the module to read its fields).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from agent import __version__
from agent.checks import CheckContext, CheckFailure, CheckSpec, CheckTimeout, CheckType
from agent.fields import Address, Bool, Field, Str, optional
from agent.units import format_address, format_duration, is_loopback_host

# "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: Connection refused"
_LAST_ERROR = re.compile(r"last error: (?:[A-Z_]+: )?(?:(?:ipv4|ipv6|unix|unix-abstract|vsock):\S*?: )?(.*)$", re.DOTALL)
# "... SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: self signed certificate: OK"
_SSL_REASON = re.compile(r"SSL routines:[^:]*:([A-Z0-9_]+)(?::\s*(.*?))?(?::\s*OK)?\s*$", re.DOTALL)
_TLS_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "is ca_file the CA that signed the server's certificate?",
    "WRONG_VERSION_NUMBER": "does the server speak TLS?",
}


@dataclass(frozen=True)
class Params:
    address: tuple[str, int]
    service: str = ""
    tls: bool = False
    ca_file: str | None = None
    server_name: str | None = None
    reuse_connection: bool = True


class GrpcCheck:
    def __init__(self, params: Params, timeout: float) -> None:
        self._grpc, self._health_pb2, self._health_pb2_grpc = _import_grpc()
        self.params, self.timeout = params, timeout
        self.host, self.port = params.address
        self.where = format_address(self.host, self.port)
        self.target = f"dns:///{self.where}"  # the explicit scheme: a host named like a scheme ("unix") stays a host
        self.subject = f"service '{params.service}'" if params.service else "the whole server"
        self._channel: Any = None  # the kept channel, when reuse_connection

    async def run(self) -> str:
        channel = self._channel if self._channel is not None else self._open()
        if self.params.reuse_connection:
            self._channel = channel
        answered = False
        try:
            stub = self._health_pb2_grpc.HealthStub(channel)
            request = self._health_pb2.HealthCheckRequest(service=self.params.service)
            response = await stub.Check(request, timeout=self.timeout)
            answered = True
        except self._grpc.aio.AioRpcError as exc:
            failure = CheckTimeout if exc.code() == self._grpc.StatusCode.DEADLINE_EXCEEDED else CheckFailure
            raise failure(self._reason(exc.code(), exc.details() or "")) from None
        finally:
            # A failed or cancelled call may leave the channel in reconnect backoff or half-broken:
            # never reuse it; the next run opens a fresh one.
            if not answered or not self.params.reuse_connection:
                await self._discard(channel)
        return self._judge(response.status)

    async def close(self) -> None:
        if self._channel is not None:
            await self._discard(self._channel)

    def _open(self) -> Any:
        grpc, p = self._grpc, self.params
        options: list[tuple[str, Any]] = [
            # Connections of this channel's own: from the global subchannel pool, a new channel would
            # reuse a live connection to the same address (another check's kept one, so that
            # reuse_connection: false opened nothing), or inherit a failed one's reconnect backoff.
            ("grpc.use_local_subchannel_pool", 1),
            # Health checks go straight to the address, as the kubelet's do, never through $http_proxy.
            ("grpc.enable_http_proxy", 0),
            ("grpc.primary_user_agent", f"sidecar-agent/{__version__}"),
        ]
        if not p.tls:
            return grpc.aio.insecure_channel(self.target, options=options)
        roots = None
        if p.ca_file:
            try:
                with open(p.ca_file, "rb") as handle:
                    roots = handle.read()
            except OSError as exc:
                raise CheckFailure(f"cannot read ca_file {p.ca_file}: {exc.strerror or exc}") from None
        if p.server_name:
            options.append(("grpc.ssl_target_name_override", p.server_name))
        return grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(root_certificates=roots), options=options)

    async def _discard(self, channel: Any) -> None:
        if self._channel is channel:
            self._channel = None
        await channel.close()

    def _judge(self, status: int) -> str:
        enum = self._health_pb2.HealthCheckResponse.ServingStatus
        name = enum.Name(status) if status in enum.values() else f"status {status}"
        of = f": {self.subject}" if self.params.service else ""
        if name == "SERVING":
            return f"SERVING{of}"
        if name == "SERVICE_UNKNOWN":
            raise CheckFailure(self._unknown_service())
        if name == "UNKNOWN":
            raise CheckFailure(f"UNKNOWN: the server has no status for {self.subject} yet")
        raise CheckFailure(f"{name}{of}")

    def _unknown_service(self) -> str:
        if self.params.service:
            return f"SERVICE_UNKNOWN: the server does not know service '{self.params.service}'"
        return "SERVICE_UNKNOWN: the server reports no status for the whole server (service '')"

    def _reason(self, code: Any, details: str) -> str:
        """An RPC error as a reason a person can act on."""
        codes = self._grpc.StatusCode
        if code == codes.NOT_FOUND:
            return self._unknown_service()
        if code == codes.UNIMPLEMENTED:
            return f"the server does not implement grpc.health.v1 (UNIMPLEMENTED from {self.where})"
        if code == codes.DEADLINE_EXCEEDED:
            return f"timed out after {format_duration(self.timeout)}"
        if code == codes.UNAVAILABLE:
            return self._unavailable(details)
        name = getattr(code, "name", str(code))
        return f"Health/Check failed with {name}: {details}" if details else f"Health/Check failed with {name}"

    def _unavailable(self, details: str) -> str:
        if "connection refused" in details.lower():
            return f"connection refused by {self.where}"
        match = _LAST_ERROR.search(details)
        if match is None:  # not a connection failure: a name that does not resolve, a dropped connection...
            return f"unavailable: {details}"
        cause = match.group(1).strip()
        if "hostname verification" in cause.lower():
            name = self.params.server_name or self.host
            return f"the TLS certificate of {self.where} is not valid for the name '{name}' (set server_name to a name it has)"
        if "handshake failed" in cause.lower():
            ssl = _SSL_REASON.search(cause)
            if ssl is not None:
                reason = ssl.group(1) + (f": {ssl.group(2)}" if ssl.group(2) else "")
                hint = _TLS_HINTS.get(ssl.group(1))
                cause = f"{reason} ({hint})" if hint else reason
            return f"TLS handshake with {self.where} failed: {cause}"
        if not self.params.tls and cause.lower() == "socket closed":
            cause += " (does the server expect tls: true?)"
        return f"unavailable: cannot connect to {self.where}: {cause}"


def _import_grpc() -> tuple[Any, Any, Any]:
    """grpc and the health stubs, imported on first use.

    gRPC core logs to stderr by itself, at INFO by default: a plain-text line for every failed TLS
    handshake, in the middle of the agent's JSON log, repeating what the check's reason already says.
    Unless GRPC_VERBOSITY is set, it is ERROR while grpc loads (core reads it then, once); it is removed
    again at once, so that no child the agent starts (exec checks, the app) inherits it.
    """
    quiet = "grpc" not in sys.modules and "GRPC_VERBOSITY" not in os.environ
    if quiet:
        os.environ["GRPC_VERBOSITY"] = "ERROR"
    try:
        # grpcio has no type information (and pyproject's mypy overrides may ignore it already).
        import grpc  # type: ignore[import-untyped, unused-ignore]
        import grpc.aio  # type: ignore[import-untyped, unused-ignore]
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped, unused-ignore]
    finally:
        if quiet:
            os.environ.pop("GRPC_VERBOSITY", None)
    return grpc, health_pb2, health_pb2_grpc


def _create(spec: CheckSpec[Params], ctx: CheckContext) -> GrpcCheck:
    return GrpcCheck(spec.params, spec.timeout)


def _validate(params: Params) -> str | None:
    if not params.tls and (params.ca_file or params.server_name):
        return "ca_file and server_name apply only to TLS: set tls: true, or remove them"
    return None


TYPE = CheckType(
    name="grpc",
    fields=(
        Field("address", Address(), doc="host:port of the gRPC server"),
        Field("service", Str(nonempty=False), doc="the service name to ask about; empty asks about the whole server"),
        Field("tls", Bool(), doc="connect with TLS"),
        optional("ca_file", Str(), "a PEM bundle of the CAs to trust for tls (default: the system's roots)"),
        optional("server_name", Str(), "the name the server's TLS certificate must have (default: the host of address)"),
        Field("reuse_connection", Bool(),
              doc="keep one connection across runs (a new one after a failure); false opens and closes one every run"),
    ),
    params=Params,
    create=_create,
    is_dependency=lambda params: not is_loopback_host(params.address[0]),
    validate=_validate,
    requires=("grpc", "grpc_health"),
    extra="grpc",
)
