"""The config text survives the kubelet's $(VAR) expansion of env values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.kube.kubelet_env import escape, expand


@given(st.text(alphabet="$(){}AB_ \n:x", max_size=40))
def test_escaped_text_comes_back_through_the_kubelet(text: str) -> None:
    assert expand(escape(text), lambda name: "EXPANDED") == text


def test_expansion_as_the_kubelet_does_it() -> None:
    env = {"A": "1"}
    assert expand("$(A)-$(B)-$$(A)-$x-${A}-$", env.get) == "1-$(B)-$(A)-$x-${A}-$"
    assert escape("dsn: ${DB} cmd: $(date) $$") == "dsn: ${DB} cmd: $$(date) $$$"
