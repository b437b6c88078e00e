"""The README's configuration reference names every key the loader accepts."""

import pathlib

from agent import checks
from agent.config import COMMON, TOP

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    names = {f.name for f in (*TOP, *COMMON)}
    for type_name in checks.type_names():
        assert f"| `{type_name}` |" in README, type_name
        names |= {f.name for f in checks.load_type(type_name).fields}
    missing = sorted(n for n in names if not any(f in README for f in (f"`{n}`", f".{n}`", f"`{n}.")))
    assert missing == []
