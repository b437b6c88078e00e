"""The admission.k8s.io/v1 contract of the webhook, without I/O: read an AdmissionReview, decide, answer.

A review's Pod goes through a mutation (the injection) as a pod template `{"metadata", "spec"}`; the
answer carries the difference as an RFC 6902 JSON Patch, computed by the `jsonpatch` library (the
`webhook` extra), which is imported only here.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonpatch

from agent.enums import Described
from agent.units import one_line

API_VERSION = "admission.k8s.io/v1"
POD = {"group": "", "version": "v1", "kind": "Pod"}
# The API server keeps a warning whole up to this length and may truncate longer ones.
MAX_WARNING = 256


class Mutation(Protocol):
    """What a mutation returns: agent.inject's Outcome has this shape."""

    @property
    def template(self) -> Mapping[str, Any]: ...

    @property
    def injected(self) -> bool: ...

    @property
    def notes(self) -> Sequence[str]: ...


Mutate = Callable[[Mapping[str, Any]], Mutation]


class BadReview(Exception):
    """A request that is not an AdmissionReview of a Pod this webhook can answer: HTTP 400, never a verdict."""


@dataclass(frozen=True)
class Review:
    """The parts of an AdmissionReview request the webhook reads."""

    uid: str
    operation: str
    pod: Mapping[str, Any]  # request.object
    namespace: str
    dry_run: bool

    @property
    def name(self) -> str:
        """namespace/name of the pod; a pod created by a controller often has only a generateName yet."""
        metadata = self.pod.get("metadata") or {}
        name = metadata.get("name") or (metadata.get("generateName") or "") + "*"
        return f"{self.namespace}/{name}"


class ReviewResult(Described):
    """What one review amounted to: the `result` of the webhook's log line and of sidecar_webhook_reviews_total."""

    INJECTED = ("injected", "the agent was added to the pod (a patch)")
    CHANGED = ("changed", "a patch that does not add the agent: the injection changed something else")
    UNCHANGED = ("unchanged", "nothing to change: opted out, or already injected (no patch)")
    REFUSED = ("refused", "the pod was refused (`allowed: false`), with the message: a bad checks annotation")
    SKIPPED = ("skipped", "not a CREATE: a pod's spec cannot change after it")
    ERROR = ("error", "the injection failed with an internal error: answered 500 and logged with its traceback")


@dataclass(frozen=True)
class Decision:
    """The answer to one review, and what it amounts to for logs and metrics."""

    body: dict[str, Any]  # the AdmissionReview response document
    result: ReviewResult
    message: str = ""  # why a pod was refused
    warnings: list[str] = field(default_factory=list)


def parse(body: bytes) -> Review:
    """The review in an HTTP request body; BadReview names what is wrong with it."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReview(f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadReview("the body is not a JSON object")
    if document.get("apiVersion") != API_VERSION or document.get("kind") != "AdmissionReview":
        raise BadReview(f"expected apiVersion {API_VERSION} and kind AdmissionReview, got "
                        f"{str(document.get('apiVersion'))[:60]!r} and {str(document.get('kind'))[:60]!r}")
    request = document.get("request")
    if not isinstance(request, dict):
        raise BadReview("request: missing (an AdmissionReview sent to a webhook carries a request)")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid: missing")
    kind = request.get("kind")
    if not isinstance(kind, dict) or {k: kind.get(k) for k in POD} != POD:
        raise BadReview(f"request.kind: this webhook reviews v1 Pods, got {str(kind)[:120]}")
    operation = request.get("operation")
    pod = request.get("object")
    if not isinstance(operation, str):
        raise BadReview("request.operation: missing")
    if operation == "CREATE" and not isinstance(pod, dict):
        raise BadReview("request.object: a CREATE review carries the Pod")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise BadReview("request.dryRun: expected true or false")
    namespace = request.get("namespace")
    return Review(uid=uid, operation=operation, pod=pod if isinstance(pod, dict) else {},
                  namespace=namespace if isinstance(namespace, str) else "", dry_run=dry_run)


def decide(review: Review, mutate: Mutate, refusals: tuple[type[Exception], ...]) -> Decision:
    """Run the mutation on the review's Pod and answer: a patch, no patch, or a refusal.

    An exception of a type in `refusals` (bad input, such as a bad checks annotation) refuses the pod
    with its message; any other exception is the webhook's own fault and propagates.
    """
    if review.operation != "CREATE":
        # Only creation is registered; a pod's spec is immutable after it, so there is nothing to add.
        return Decision(_answer(review.uid, allowed=True), ReviewResult.SKIPPED)
    before = {key: review.pod[key] for key in ("metadata", "spec") if key in review.pod}
    template = {"metadata": review.pod.get("metadata") or {}, "spec": review.pod.get("spec") or {}}
    try:
        # A copy: the patch is the difference from the untouched original, whatever the mutation does.
        outcome = mutate(copy.deepcopy(template))
    except refusals as exc:
        message = str(exc)
        return Decision(_answer(review.uid, allowed=False, status={
            "status": "Failure", "code": 400, "reason": "BadRequest", "message": f"sidecar-agent: {message}"}),
            ReviewResult.REFUSED, message=message)
    warnings = [_warning(note) for note in outcome.notes]
    after = {"metadata": outcome.template.get("metadata") or {}, "spec": outcome.template.get("spec") or {}}
    operations = jsonpatch.make_patch(before, after).patch
    if not operations:
        return Decision(_answer(review.uid, allowed=True, warnings=warnings), ReviewResult.UNCHANGED, warnings=warnings)
    patch = base64.b64encode(json.dumps(operations, separators=(",", ":")).encode()).decode()
    return Decision(_answer(review.uid, allowed=True, warnings=warnings, patch=patch),
                    ReviewResult.INJECTED if outcome.injected else ReviewResult.CHANGED, warnings=warnings)


def _warning(note: str) -> str:
    return one_line(f"sidecar-agent: {note}", MAX_WARNING)


def _answer(uid: str, *, allowed: bool, warnings: Sequence[str] = (), patch: str | None = None,
            status: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch
    if status is not None:
        response["status"] = status
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
