"""Configuration: environment variables and `.env`, and prod's refusal to start on default secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.app import create_app
from gateway.settings import DEV_COOKIE_SECRET, DEV_DATA_KEY, DEV_PEPPER, Environment, InsecureSettingsError, Settings
from tests.conftest import make_settings, running

GOOD = {"api_key_pepper": "p" * 40, "cookie_secret": "c" * 40, "data_encryption_key": "d" * 40}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PORTCULLIS_* variable and no `.env` from the surroundings leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def prod(key: str | None, **values: Any) -> Settings:
    merged: dict[str, Any] = {"env": "prod", "signing_key": key, **GOOD, **values}
    return Settings(_env_file=None, **merged)  # type: ignore[call-arg]


def test_defaults_are_the_embedded_mode() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.env is Environment.DEV
    assert s.database_url == "sqlite:///./portcullis.db"
    assert s.redis_url is None
    assert s.max_body_bytes == 1024 * 1024
    assert s.graphiql_enabled
    assert s.anonymous_introspection
    assert s.suggestions_enabled
    assert not s.is_prod


def test_prod_with_proper_secrets(signing_key: str) -> None:
    s = prod(signing_key)
    assert s.is_prod
    assert not s.graphiql_enabled
    assert not s.anonymous_introspection
    assert not s.suggestions_enabled


def test_prod_cannot_turn_graphiql_on(signing_key: str) -> None:
    assert not prod(signing_key, graphiql=True).graphiql_enabled


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"signing_key": None}, "PORTCULLIS_SIGNING_KEY"),
        ({"api_key_pepper": DEV_PEPPER}, "PORTCULLIS_API_KEY_PEPPER"),
        ({"api_key_pepper": ""}, "PORTCULLIS_API_KEY_PEPPER"),
        ({"api_key_pepper": "too-short-a-pepper"}, "PORTCULLIS_API_KEY_PEPPER"),
        ({"cookie_secret": DEV_COOKIE_SECRET}, "PORTCULLIS_COOKIE_SECRET"),
        ({"cookie_secret": "x" * 31}, "PORTCULLIS_COOKIE_SECRET"),
        ({"data_encryption_key": DEV_DATA_KEY}, "PORTCULLIS_DATA_ENCRYPTION_KEY"),
        ({"data_encryption_key": "k" * 31}, "PORTCULLIS_DATA_ENCRYPTION_KEY"),
        ({"signing_key_file": ".portcullis/dev-signing-key.pem", "signing_key": None}, "development key"),
    ],
)
def test_prod_refuses_insecure_secrets(signing_key: str, values: dict[str, Any], needle: str) -> None:
    with pytest.raises(InsecureSettingsError) as exc:
        prod(signing_key, **values)
    assert needle in str(exc.value)
    assert "prod" in str(exc.value)


def test_prod_names_every_problem() -> None:
    with pytest.raises(InsecureSettingsError) as exc:
        Settings(_env_file=None, env="prod")  # type: ignore[call-arg]
    message = str(exc.value)
    for name in (
        "PORTCULLIS_SIGNING_KEY",
        "PORTCULLIS_API_KEY_PEPPER",
        "PORTCULLIS_COOKIE_SECRET",
        "PORTCULLIS_DATA_ENCRYPTION_KEY",
    ):
        assert name in message


def test_secrets_do_not_show_in_repr(signing_key: str) -> None:
    s = prod(signing_key)
    text = repr(s) + str(s.model_dump())
    assert "p" * 40 not in text
    assert "BEGIN" not in text


@pytest.mark.parametrize("env", ["dev", "test"])
def test_defaults_are_fine_outside_prod(env: str) -> None:
    s = Settings(_env_file=None, env=env)  # type: ignore[call-arg]
    assert s.api_key_pepper.get_secret_value() == DEV_PEPPER


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", "sqlite:///./other.db")
    monkeypatch.setenv("PORTCULLIS_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("PORTCULLIS_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    s = Settings()
    assert s.database_url == "sqlite:///./other.db"
    assert s.max_body_bytes == 4096
    assert s.trusted_proxies == ["10.0.0.0/8", "192.168.1.1"]


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("PORTCULLIS_TRUSTED_PROXIES", "not-a-network")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("PORTCULLIS_TRUSTED_PROXIES")
    monkeypatch.setenv("PORTCULLIS_ENV", "production")
    with pytest.raises(ValidationError):
        Settings()


def test_dotenv_file(tmp_path: Path, signing_key: str) -> None:
    key_file = tmp_path / "signing.pem"
    key_file.write_text(signing_key)
    (tmp_path / ".env").write_text(
        "PORTCULLIS_ENV=prod\n"
        f"PORTCULLIS_SIGNING_KEY_FILE={key_file}\n"
        f"PORTCULLIS_API_KEY_PEPPER={'q' * 40}\n"
        f"PORTCULLIS_COOKIE_SECRET={'r' * 40}\n"
        f"PORTCULLIS_DATA_ENCRYPTION_KEY={'s' * 40}\n"
        "PORTCULLIS_MAX_BODY_BYTES=2048\n"
    )
    s = Settings()
    assert s.is_prod
    assert s.max_body_bytes == 2048
    assert s.api_key_pepper.get_secret_value() == "q" * 40
    assert s.signing_key_pems()[0] == signing_key


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PORTCULLIS_MAX_BODY_BYTES=2048\nPORTCULLIS_LOG_LEVEL=WARNING\n")
    monkeypatch.setenv("PORTCULLIS_MAX_BODY_BYTES", "8192")
    s = Settings()
    assert s.max_body_bytes == 8192
    assert s.log_level == "WARNING"


def test_insecure_dotenv_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORTCULLIS_ENV=prod\n")
    with pytest.raises(InsecureSettingsError):
        Settings()


def test_dev_key_is_created_once_and_private(tmp_path: Path) -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    first, previous = s.signing_key_pems()
    assert previous == []
    key_file = tmp_path / ".portcullis" / "dev-signing-key.pem"
    assert key_file.exists()
    assert key_file.stat().st_mode & 0o077 == 0
    assert s.signing_key_pems()[0] == first


def test_previous_signing_keys(tmp_path: Path, signing_key: str) -> None:
    old = tmp_path / "old.pem"
    old.write_text("old key")
    s = Settings(_env_file=None, signing_key=signing_key, previous_signing_key_files=str(old))  # type: ignore[call-arg]
    assert s.signing_key_pems() == (signing_key, ["old key"])


# -- starting -----------------------------------------------------------------------------------------


async def test_prod_with_proper_secrets_starts(sqlite_url: str, signing_key: str) -> None:
    app = create_app(make_settings(sqlite_url, signing_key, env="prod", **GOOD))
    async with running(app) as client:
        r = await client.get("/healthz")
        assert r.status_code == 200
        assert "strict-transport-security" in r.headers


def test_serve_refuses_insecure_prod(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    started: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append((a, k)))
    monkeypatch.setenv("PORTCULLIS_ENV", "prod")
    monkeypatch.setenv("PORTCULLIS_COOKIE_SECRET", DEV_COOKIE_SECRET)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--port", "1"])
    assert exc.value.code not in (0, None)
    assert "PORTCULLIS_COOKIE_SECRET" in str(exc.value.code)
    assert started == []


def _weak_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.mark.parametrize("key", ["short", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "weak"])
def test_serve_refuses_an_unusable_signing_key(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    import uvicorn

    started: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append((a, k)))
    monkeypatch.setenv("PORTCULLIS_ENV", "prod")
    monkeypatch.setenv("PORTCULLIS_SIGNING_KEY", _weak_key() if key == "weak" else key)
    monkeypatch.setenv("PORTCULLIS_API_KEY_PEPPER", "p" * 40)
    monkeypatch.setenv("PORTCULLIS_COOKIE_SECRET", "c" * 40)
    monkeypatch.setenv("PORTCULLIS_DATA_ENCRYPTION_KEY", "d" * 40)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    assert "signing key" in str(exc.value.code)
    assert started == []


def test_serve_refuses_a_missing_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORTCULLIS_SIGNING_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    assert "signing key" in str(exc.value.code)


def test_serve_starts_with_proper_prod_settings(monkeypatch: pytest.MonkeyPatch, signing_key: str) -> None:
    import uvicorn

    started: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append((a, k)))
    monkeypatch.setenv("PORTCULLIS_ENV", "prod")
    monkeypatch.setenv("PORTCULLIS_SIGNING_KEY", signing_key)
    monkeypatch.setenv("PORTCULLIS_API_KEY_PEPPER", "p" * 40)
    monkeypatch.setenv("PORTCULLIS_COOKIE_SECRET", "c" * 40)
    monkeypatch.setenv("PORTCULLIS_DATA_ENCRYPTION_KEY", "d" * 40)
    assert cli.main(["migrate"]) == 0  # serve refuses an unmigrated database (tests/gateway/test_start_refusals.py)
    assert cli.main(["serve", "--port", "8123", "--host", "127.0.0.1"]) == 0
    [(args, kwargs)] = started
    assert args == ("gateway.app:create_app",)
    assert kwargs["factory"] is True
    assert kwargs["port"] == 8123


def test_serve_process_exits_non_zero(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env["PORTCULLIS_ENV"] = "prod"
    done = subprocess.run(
        [sys.executable, "-c", "from gateway.cli import main; raise SystemExit(main())", "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "refusing to start in prod" in done.stderr
    assert "PORTCULLIS_SIGNING_KEY" in done.stderr
    assert "Traceback" not in done.stderr
