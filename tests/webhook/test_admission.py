"""agent.webhook.admission without a server: the patch between any pod template and any mutation of it is exact, the
mutation gets a copy, and a refusal or an unexpected error is told apart."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.webhook.admission import BadReview, Review, decide, parse
from tests.webhook.mutation import Refused, Result
from tests.webhook.reviews import patched, pod

KEYS = st.sampled_from(["name", "image", "ports", "env", "a/b", "x~y", "", "0", "-", "args"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["", "a", "b", "8686", "/"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                    max_leaves=20)
TEMPLATES = st.fixed_dictionaries({"metadata": st.dictionaries(KEYS, JSON, max_size=3),
                                   "spec": st.dictionaries(KEYS, JSON, max_size=4)})


def pod_review(obj: dict[str, Any], dry_run: bool = False) -> Review:
    return Review(uid="u-1", operation="CREATE", pod=obj, namespace="shop", dry_run=dry_run)


@settings(max_examples=300, deadline=None)
@given(before=TEMPLATES, after=TEMPLATES)
def test_the_patch_turns_any_template_into_any_mutation_of_it(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Keys with / and ~ (escaped in JSON Pointers), list insertions and removals, type changes, empty values."""
    obj = {"apiVersion": "v1", "kind": "Pod", **copy.deepcopy(before), "status": {"phase": "Pending"}}
    decision = decide(pod_review(obj), lambda template: Result(copy.deepcopy(after), True), ())
    response = decision.body["response"]
    if before == after:
        assert "patch" not in response and decision.result == "unchanged"
    else:
        assert patched(obj, response) == {**obj, **after}


def test_the_mutation_gets_a_copy_so_the_patch_is_against_the_original() -> None:
    def in_place(template: Mapping[str, Any]) -> Result:
        template["spec"]["containers"].append({"name": "sidecar-agent"})  # type: ignore[index]
        return Result(dict(template), True)

    obj = pod()
    original = copy.deepcopy(obj)
    decision = decide(pod_review(obj), in_place, ())
    assert obj == original
    assert patched(obj, decision.body["response"])["spec"]["containers"][-1] == {"name": "sidecar-agent"}


def test_a_refusal_is_a_verdict_and_another_error_propagates() -> None:
    def refuse(template: Mapping[str, Any]) -> Result:
        raise Refused("metadata.annotations[sidecar-agent.io/checks].db.dsn: a literal password")

    decision = decide(pod_review(pod()), refuse, (Refused,))
    assert decision.result == "refused"
    assert decision.body["response"]["status"]["message"] == (
        "sidecar-agent: metadata.annotations[sidecar-agent.io/checks].db.dsn: a literal password")
    with pytest.raises(Refused):
        decide(pod_review(pod()), refuse, (KeyError,))


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'"AdmissionReview"',
                                  b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}'])
def test_parse_refuses_what_is_not_a_review(body: bytes) -> None:
    with pytest.raises(BadReview):
        parse(body)
