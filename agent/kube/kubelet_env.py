"""The kubelet's `$(VAR)` expansion of container env values, and the escaping that lets a text through it unchanged."""

from __future__ import annotations

from collections.abc import Callable


def escape(text: str) -> str:
    """`text` written so that the kubelet's expansion gives it back: a `$` before `$` or `(` is doubled.

    The kubelet reads `$$` as a literal `$` and `$(NAME)` as a reference; any other `$` passes as it is.
    """
    out = []
    for i, char in enumerate(text):
        out.append("$$" if char == "$" and text[i + 1:i + 2] in ("$", "(") else char)
    return "".join(out)


def expand(text: str, lookup: Callable[[str], str | None] = lambda name: None) -> str:
    """What the kubelet makes of an env value: `$$` -> `$`, `$(NAME)` -> its value (kept as written when unknown)."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        follow = text[i + 1]
        if follow == "$":
            out.append("$")
            i += 2
        elif follow == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2:end]
            value = lookup(name)
            out.append(value if value is not None else f"$({name})")
            i = end + 1
        else:
            out.append("$" + follow)
            i += 2
    return "".join(out)
