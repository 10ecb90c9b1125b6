"""The image's recipe, read as Docker reads it (Docker itself does not run here): a Node stage
for the assets, a builder running the wheel script CI runs, and a slim runtime holding only the
wheel and the runtime lock, as a non-root user, in production, with a health check."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field

import pytest

from tests.conftest import ROOT


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Instructions per stage: comments dropped, `\\` continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation runs off the end of the Dockerfile"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, line
            stages.append(Stage(match[1], match[2] or str(len(stages))))
        else:
            assert stages, f"{keyword} before any FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def env_of(stage: Stage) -> dict[str, str]:
    found: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            found[key] = value
    return found


def test_three_stages_node_builder_slim_runtime(stages: list[Stage]) -> None:
    assert [s.name for s in stages] == ["assets", "builder", "runtime"]
    assets, builder, runtime = stages
    assert assets.image.startswith("node:")
    assert any("npm ci" in run for run in assets.all("RUN"))
    assert builder.image.startswith("python:3.11")
    assert runtime.image == "python:3.11-slim"


def test_builder_runs_the_script_ci_runs(stages: list[Stage]) -> None:
    builder = stages[1]
    assert any("scripts/build-wheel.sh" in run for run in builder.all("RUN"))
    assert any(
        "--require-hashes" in r and "requirements-build.lock" in r for r in builder.all("RUN")
    )
    assert any(c.startswith("--from=assets ") for c in builder.all("COPY"))


def test_runtime_holds_only_the_wheel_and_its_lock(stages: list[Stage]) -> None:
    runtime = stages[2]
    assert runtime.all("COPY") == []
    assert runtime.all("ADD") == []
    runs = " ".join(runtime.all("RUN"))
    assert "--require-hashes" in runs
    assert "requirements-runtime.lock" in runs
    assert "from=builder" in runs
    assert "wallet-*.whl" in runs
    assert "requirements.lock" not in runs.replace("requirements-runtime.lock", "")
    assert " -e " not in runs
    assert "--editable" not in runs
    for tool in ("npm", "gcc", "pytest", "apt-get"):
        assert tool not in runs


def test_runtime_runs_as_a_user_in_production_with_a_health_check(stages: list[Stage]) -> None:
    runtime = stages[2]
    users = runtime.all("USER")
    assert users
    assert users[-1] not in ("root", "0")
    assert runtime.instructions.index(("USER", users[-1])) > max(
        i for i, (kw, _) in enumerate(runtime.instructions) if kw == "RUN"
    ), "USER comes after the last RUN, so the service never runs as root"
    assert env_of(runtime)["WALLET_ENV"] == "production"
    (check,) = runtime.all("HEALTHCHECK")
    assert check.split()[0].startswith("--")
    assert " CMD " in f" {check} "
    assert "/readyz" in check
    command = json.loads(runtime.all("CMD")[-1])
    assert command[:2] == ["wallet", "serve"]


def test_everything_the_build_copies_is_in_the_context() -> None:
    """A COPY of a path that .dockerignore drops, or that is missing, fails in `docker build`."""
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in parse((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        sources = [
            source
            for args in stage.all("COPY")
            if not args.startswith("--from=")
            for source in args.split()[:-1]
        ] + [  # files bound into a RUN from the context (not from another stage)
            mount["source"]
            for args in stage.all("RUN")
            for spec in re.findall(r"--mount=(\S+)", args)
            if "from" not in (mount := dict(kv.split("=", 1) for kv in spec.split(",")))
        ]
        assert sources
        for source in sources:
            path = source.rstrip("/")
            assert (ROOT / path).exists(), source
            assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), source


def test_compose_says_development_explicitly() -> None:
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for service in ("migrate", "app"):
        body = compose.split(f"\n  {service}:\n", 1)[1]
        section = body.split("\n\n", 1)[0]  # up to the next service
        assert "WALLET_ENV: development" in section, service
