"""The webhook over real TLS, with AdmissionReview requests as the API server sends them.

Each review's answer echoes the uid; its JSON Patch, applied with the jsonpatch library, turns the Pod
into exactly what the mutation returned; a refusal carries the mutation's message; an opted-out or
already injected pod gets no patch; a dry run gets the same answer and is counted apart; a malformed
or oversized request gets a 4xx and the next request is still served.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import logging
import os
import ssl
from typing import Any

import aiohttp
import pytest

from agent.webhook.admission import MAX_WARNING
from agent.webhook.server import MAX_BODY
from tests.webhook.conftest import Running, TlsPair
from tests.webhook.mutation import CHECKS, OPT, STATUS, add_agent
from tests.webhook.reviews import client_context, patched, pod, review


async def send(webhook: Running, body: Any) -> tuple[int, Any]:
    data = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
    async with webhook.session.post(f"{webhook.url}/inject", data=data,
                                    headers={"Content-Type": "application/json"}) as answer:
        text = await answer.text()
        return answer.status, (json.loads(text) if answer.content_type == "application/json" else text)


def expected(obj: dict[str, Any]) -> dict[str, Any]:
    """The Pod as the mutation makes it: its metadata and spec replaced, the rest (kind, status) as it was."""
    template = add_agent(copy.deepcopy({"metadata": obj["metadata"], "spec": obj["spec"]})).template
    return {**obj, "metadata": template["metadata"], "spec": template["spec"]}


async def test_a_pod_gets_a_patch_that_makes_exactly_the_mutated_pod(webhook: Running) -> None:
    obj = pod()
    request = review(obj, uid="705ab4f5-6393-11e8-b7cc-42010a800002")
    status, answer = await send(webhook, request)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is True
    after = patched(obj, response)
    assert after == expected(obj)
    assert after["metadata"]["annotations"][STATUS] and after["spec"]["initContainers"][0]["name"] == "sidecar-agent"
    assert webhook.sample("sidecar_webhook_reviews_total", result="injected", dry_run="false") == 1


async def test_the_mutations_notes_come_back_as_warnings(webhook: Running) -> None:
    status, answer = await send(webhook, review(pod()))
    assert status == 200
    assert answer["response"]["warnings"] == ["sidecar-agent: container worker: its exec liveness probe stays on the container"]
    long_note = pod(containers=[{"name": "w" * 400, "image": "x", "livenessProbe": {"exec": {"command": ["true"]}}}])
    status, answer = await send(webhook, review(long_note))
    assert [len(w) for w in answer["response"]["warnings"]] == [MAX_WARNING], "the API server may cut longer warnings"


async def test_a_bad_checks_annotation_refuses_the_pod_with_its_key_path(webhook: Running) -> None:
    request = review(pod(annotations={CHECKS: "- not a mapping"}))
    status, answer = await send(webhook, request)
    assert status == 200, "a refusal is a verdict, not a failed call"
    response = answer["response"]
    assert response["uid"] == request["request"]["uid"]
    assert response["allowed"] is False
    assert "patch" not in response
    assert response["status"]["code"] == 400
    assert f"metadata.annotations[{CHECKS}]" in response["status"]["message"]
    assert webhook.sample("sidecar_webhook_reviews_total", result="refused", dry_run="false") == 1


@pytest.mark.parametrize("marks", [{"labels": {OPT: "false"}}, {"annotations": {OPT: "false"}},
                                   {"annotations": {STATUS: '{"version":"0.1.0"}'}}],
                         ids=["opt-out-label", "opt-out-annotation", "already-injected"])
async def test_an_opted_out_or_injected_pod_is_allowed_without_a_patch(webhook: Running, marks: dict[str, Any]) -> None:
    status, answer = await send(webhook, review(pod(**marks)))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is True
    assert "patch" not in response and "patchType" not in response
    assert webhook.sample("sidecar_webhook_reviews_total", result="unchanged", dry_run="false") == 1


async def test_a_dry_run_gets_the_same_patch_and_is_not_counted_as_applied(webhook: Running,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    obj = pod()
    with caplog.at_level(logging.INFO, logger="agent.webhook"):
        status, answer = await send(webhook, review(obj, dry_run=True))
    assert status == 200
    assert patched(obj, answer["response"]) == expected(obj), "a dry run shows the user what creation would do"
    assert webhook.sample("sidecar_webhook_reviews_total", result="injected", dry_run="true") == 1
    assert webhook.sample("sidecar_webhook_reviews_total", result="injected", dry_run="false") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.webhook"]
    assert [line for line in lines if "pod shop/web-7d4b9" in line] == [
        "dry run: would inject the agent into pod shop/web-7d4b9; "
        "sidecar-agent: container worker: its exec liveness probe stays on the container"]


async def test_an_update_or_a_pod_with_only_a_generate_name_is_handled(webhook: Running) -> None:
    status, answer = await send(webhook, review(pod(), operation="UPDATE"))
    assert status == 200 and answer["response"]["allowed"] is True and "patch" not in answer["response"]
    obj = pod()
    obj["metadata"] = {"generateName": "web-7d4b9-", "namespace": "shop"}  # a ReplicaSet's pod, no labels at all
    status, answer = await send(webhook, review(obj))
    assert status == 200
    assert patched(obj, answer["response"]) == expected(obj)


MALFORMED = {
    "not-json": b"{this is not json",
    "not-utf8": b"\xff\xfe\x00",
    "a-list": [1, 2, 3],
    "wrong-api-version": {**review(pod()), "apiVersion": "admission.k8s.io/v1beta1"},
    "wrong-kind": {**review(pod()), "kind": "Pod"},
    "no-request": {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
    "no-uid": {**review(pod()), "request": {k: v for k, v in review(pod())["request"].items() if k != "uid"}},
    "not-a-pod": review({"metadata": {"name": "x"}}, kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
    "no-object": review(None),
    "no-operation": {**review(pod()), "request": {k: v for k, v in review(pod())["request"].items() if k != "operation"}},
    "bad-dry-run": {**review(pod()), "request": {**review(pod())["request"], "dryRun": "yes"}},
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_gets_400_and_the_next_review_is_served(webhook: Running, body: Any) -> None:
    status, answer = await send(webhook, body)
    assert status == 400
    assert answer.startswith("not an AdmissionReview of a Pod: ")
    status, answer = await send(webhook, review(pod()))
    assert status == 200 and answer["response"]["allowed"] is True
    assert webhook.sample("sidecar_webhook_bad_requests_total", code="400") == 1


async def test_a_body_over_the_limit_gets_413_and_the_largest_real_review_fits(webhook: Running) -> None:
    # The largest Pod the API server stores is 1.5 MiB: carried twice (object and oldObject), it still fits.
    big = pod(annotations={"big": "x" * (3 * 2**19)})
    request = review(big)
    request["request"]["oldObject"] = big
    assert 3 * 2**20 < len(json.dumps(request)) < MAX_BODY
    status, answer = await send(webhook, request)
    assert status == 200 and patched(big, answer["response"]) == expected(big)
    status, answer = await send(webhook, review(pod(annotations={"big": "x" * MAX_BODY})))
    assert status == 413
    assert webhook.sample("sidecar_webhook_bad_requests_total", code="413") == 1
    status, answer = await send(webhook, review(pod()))
    assert status == 200 and answer["response"]["allowed"] is True


async def test_a_failing_mutation_gets_500_and_the_server_keeps_serving(webhook: Running) -> None:
    def broken(template: Any) -> Any:
        raise KeyError("spec")

    webhook.server.mutate = broken
    status, _ = await send(webhook, review(pod()))
    assert status == 500, "a 500 lets the configuration's failurePolicy decide"
    webhook.server.mutate = add_agent
    status, answer = await send(webhook, review(pod()))
    assert status == 200 and answer["response"]["allowed"] is True


async def test_healthz_and_metrics_are_served_over_tls(webhook: Running) -> None:
    async with webhook.session.get(f"{webhook.url}/healthz") as answer:
        assert answer.status == 200 and await answer.text() == "ok\n"
    await send(webhook, review(pod()))
    async with webhook.session.get(f"{webhook.url}/metrics") as answer:
        text = await answer.text()
    assert 'sidecar_webhook_reviews_total{dry_run="false",result="injected"} 1.0' in text
    assert "sidecar_webhook_review_duration_seconds_count 1.0" in text


async def test_a_plain_http_client_gets_no_answer(webhook: Running) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{webhook.server.port}/healthz") as answer:
                await answer.read()


# -- certificate rotation -----------------------------------------------------------------------------


async def served_certificate(webhook: Running, context: ssl.SSLContext) -> bytes:
    """The DER certificate the webhook presents to a new connection."""
    _, writer = await asyncio.open_connection("127.0.0.1", webhook.server.port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der: bytes = ssl_object.getpeercert(binary_form=True)
        return der
    finally:
        writer.close()
        await writer.wait_closed()


def der(pair: TlsPair) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pair.cert.read_text())


def replace(source: Any, target: Any) -> None:
    """Swap a file in whole, as a Secret volume's update does."""
    temporary = target.with_suffix(".new")
    temporary.write_bytes(source.read_bytes())
    os.replace(temporary, target)


async def test_rotated_certificate_files_are_served_to_new_connections(webhook: Running,
                                                                       pairs: dict[str, TlsPair]) -> None:
    both = client_context(pairs["first"].cert, pairs["second"].cert)
    assert await served_certificate(webhook, both) == der(pairs["first"])
    replace(pairs["second"].key, webhook.tls.key)
    replace(pairs["second"].cert, webhook.tls.cert)
    assert await served_certificate(webhook, both) == der(pairs["second"])
    assert webhook.sample("sidecar_webhook_certificate_reloads_total", result="success") == 1
    # Reviews go on over the new certificate, for a client that trusts it alone.
    connector = aiohttp.TCPConnector(ssl=client_context(pairs["second"].cert))
    async with aiohttp.ClientSession(connector=connector) as fresh, fresh.post(f"{webhook.url}/inject",
                                                                               json=review(pod())) as answer:
        assert answer.status == 200


async def test_a_half_rotated_pair_keeps_the_last_good_certificate_until_it_is_whole(
        webhook: Running, pairs: dict[str, TlsPair]) -> None:
    both = client_context(pairs["first"].cert, pairs["second"].cert)
    replace(pairs["second"].cert, webhook.tls.cert)  # the key is still the first pair's: they do not match
    assert await served_certificate(webhook, both) == der(pairs["first"])
    assert await served_certificate(webhook, both) == der(pairs["first"])
    assert webhook.sample("sidecar_webhook_certificate_reloads_total", result="failure") == 1, "one failure per change"
    replace(pairs["second"].key, webhook.tls.key)
    assert await served_certificate(webhook, both) == der(pairs["second"])
    assert webhook.sample("sidecar_webhook_certificate_reloads_total", result="success") == 1


async def test_certificate_files_missing_for_a_moment_keep_the_loaded_pair_in_service(
        webhook: Running, pairs: dict[str, TlsPair]) -> None:
    both = client_context(pairs["first"].cert, pairs["second"].cert)
    webhook.tls.cert.unlink()  # between a volume's old files going and the new ones coming
    assert await served_certificate(webhook, both) == der(pairs["first"])
    assert webhook.sample("sidecar_webhook_certificate_reloads_total", result="failure") == 0, "nothing to load yet"
    replace(pairs["second"].key, webhook.tls.key)
    replace(pairs["second"].cert, webhook.tls.cert)
    assert await served_certificate(webhook, both) == der(pairs["second"])


async def test_the_patch_is_base64_json_patch(webhook: Running) -> None:
    status, answer = await send(webhook, review(pod()))
    assert status == 200
    operations = json.loads(base64.b64decode(answer["response"]["patch"], validate=True))
    # The operations a JSON Patch library applies (RFC 6902); "test" would make the API server reject on mismatch,
    # and the mutation neither copies nor needs to test a value: a diff of a template adds, removes, replaces, moves.
    assert operations and {op["op"] for op in operations} <= {"add", "remove", "replace", "move"}, operations
    assert all(set(op) == {"op", "path", "value"} if op["op"] in ("add", "replace") else
               set(op) == {"op", "path", "from"} if op["op"] == "move" else set(op) == {"op", "path"}
               for op in operations), operations
    assert all(op["path"].startswith(("/metadata", "/spec")) for op in operations), "only the template is patched"
