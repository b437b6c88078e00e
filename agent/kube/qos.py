"""A pod's QoS class from its spec, by the rules of the API server and kubelet (pkg/apis/core/helper/qos: ComputePodQOS).

- Only cpu and memory count, and only quantities above zero.
- Every container counts, init containers included (a native sidecar is one); ephemeral containers cannot have
  resources.
- A container's missing request defaults to its limit (the API server's defaulting, SetDefaults_Pod), so a
  container with limits only has requests equal to them.
- BestEffort: no container requests or limits any cpu or memory.
- Guaranteed: every container has both a cpu and a memory limit, and for each resource the pod's summed requests
  equal its summed limits (so in practice every container's requests equal its limits).
- Burstable: anything else.
- Pod-level resources (`spec.resources`, the PodLevelResources feature, beta and on from 1.34): when they name cpu
  or memory, they alone decide, by the same rules.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

RESOURCES = ("cpu", "memory")
_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?\d+))?")
_SUFFIX = {"": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
           "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
           "P": Fraction(10**15), "E": Fraction(10**18),
           "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
           "Pi": Fraction(2**50), "Ei": Fraction(2**60)}


class QuantityError(ValueError):
    """A resource quantity that is not one; `path` is the keys from the pod spec to it."""

    def __init__(self, message: str, path: tuple[str | int, ...]) -> None:
        where = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")
        super().__init__(f"{where}: {message}")
        self.path = path


class QosClass(enum.Enum):
    """status.qosClass."""

    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


def quantity(value: object) -> Fraction:
    """The exact value of a Kubernetes quantity (`500m`, `1`, `0.5`, `128Mi`, `1e3`, or a YAML number); ValueError
    when it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a quantity: {value!r}")
    found = _QUANTITY.fullmatch(str(value).strip())
    if found is None:
        raise ValueError(f"not a quantity: {value!r}")
    number = Fraction(found[1])
    if found[3] is not None:
        return number * Fraction(10) ** int(found[3])
    return number * _SUFFIX[found[2] or ""]


def _list(node: object) -> Mapping[str, Any]:
    return node if isinstance(node, Mapping) else {}


def _positive(resources: Mapping[str, Any], where: tuple[str | int, ...]) -> dict[str, Fraction]:
    """The cpu and memory quantities above zero (the ones the QoS rules count)."""
    out: dict[str, Fraction] = {}
    for name in RESOURCES:
        if name in resources:
            try:
                amount = quantity(resources[name])
            except ValueError as exc:
                raise QuantityError(str(exc), (*where, name)) from None
            if amount > 0:
                out[name] = amount
    return out


def _requests_and_limits(resources: object, where: tuple[str | int, ...]) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """Requests (a missing one defaulted to its limit, as the API server does) and limits, both positive only."""
    node = _list(resources)
    limits = _positive(_list(node.get("limits")), (*where, "limits"))
    written = _list(node.get("requests"))
    requests = _positive(written, (*where, "requests"))
    # A request left out is its limit; one written, zero included, stays as written.
    requests = {**{n: q for n, q in limits.items() if n not in written}, **requests}
    return requests, limits


def _add(total: dict[str, Fraction], part: Mapping[str, Fraction]) -> None:
    for name, amount in part.items():
        total[name] = total.get(name, Fraction(0)) + amount


def _decide(requests: Mapping[str, Fraction], limits: Mapping[str, Fraction], every_limit_set: bool) -> QosClass:
    if not requests and not limits:
        return QosClass.BEST_EFFORT
    if every_limit_set and len(requests) == len(limits) and all(limits.get(n) == q for n, q in requests.items()):
        return QosClass.GUARANTEED
    return QosClass.BURSTABLE


def _containers(spec: Mapping[str, Any]) -> Iterable[tuple[tuple[str | int, ...], Mapping[str, Any]]]:
    for key in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(key) or ()):
            if isinstance(container, Mapping):
                yield (key, index), container


def pod_level(spec: Mapping[str, Any]) -> bool:
    """Whether the pod-level resources decide the class (then the containers' do not)."""
    resources = _list(spec.get("resources"))
    return any(name in _list(resources.get(key)) for key in ("requests", "limits") for name in RESOURCES)


def qos_class(spec: Mapping[str, Any]) -> QosClass:
    """The QoS class the API server gives a pod with this spec; QuantityError on a quantity that is not one."""
    if pod_level(spec):
        requests, limits = _requests_and_limits(spec.get("resources"), ("resources",))
        return _decide(requests, limits, all(name in limits for name in RESOURCES))
    requests, limits = {}, {}
    every_limit_set = True
    for where, container in _containers(spec):
        own_requests, own_limits = _requests_and_limits(container.get("resources"), (*where, "resources"))
        _add(requests, own_requests)
        _add(limits, own_limits)
        every_limit_set = every_limit_set and all(name in own_limits for name in RESOURCES)
    return _decide(requests, limits, every_limit_set)
