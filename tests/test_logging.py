"""Log lines as production writes them: one JSON object per line, whatever the values, and no
secret in it; a terminal gets readable lines."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import structlog

from wallet.logging import configure_logging
from wallet.settings import Settings

ALICE = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")


@pytest.fixture
def reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("reset_logging")
def test_a_production_line_is_one_json_object_whatever_its_values(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(database_url="postgresql://unused/db", env="production"))
    log = structlog.get_logger("wallet.test")
    log.info("plain", user=ALICE, amount=7, ratio=0.5, nothing=None, nested={"a": [1, "b"]})
    # Past 64 bits (orjson refuses it), a key that is not a string, an object JSON lacks.
    log.info("odd", huge=2**70, keyed={1: "one"}, thing=object())
    log.warning("secret", detail="Authorization: Bearer abc.def.ghi", url="postgresql://u:pw@h/d")
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["plain", "odd", "secret"]
    plain, odd, secret = lines
    assert plain["user"] == str(ALICE)
    assert (plain["amount"], plain["ratio"], plain["nothing"]) == (7, 0.5, None)
    assert plain["nested"] == {"a": [1, "b"]}
    assert plain["level"] == "info"
    assert plain["timestamp"].endswith("Z")
    assert odd["huge"] == 2**70  # exact, not a float
    assert odd["keyed"] == {"1": "one"}
    assert odd["thing"].startswith("<object object at")
    assert "abc.def.ghi" not in secret["detail"]
    assert "pw" not in secret["url"]
    assert secret["level"] == "warning"


@pytest.mark.usefixtures("reset_logging")
def test_a_terminal_gets_readable_lines(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(database_url="postgresql://unused/db", env="development"))
    structlog.get_logger("wallet.test").info("readable", user=ALICE)
    out = capfd.readouterr().out
    assert "readable" in out
    assert str(ALICE) in out
    assert not out.lstrip().startswith("{")


@pytest.mark.parametrize("env", ["production", "development"])
@pytest.mark.usefixtures("reset_logging")
def test_a_lone_surrogate_from_a_client_is_written_escaped(
    env: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A client's text can hold a lone surrogate (JSON's "\\ud800"), which no UTF-8 stream
    takes: the line is written, with the surrogate spelled out."""
    configure_logging(Settings(database_url="postgresql://unused/db", env=env))
    structlog.get_logger("wallet.test").warning("odd_name", name="A\ud800B")
    out = capfd.readouterr().out
    assert "odd_name" in out
    if env == "production":
        assert json.loads(out)["name"] == "A\\ud800B"
    else:
        assert "A\\ud800B" in out
