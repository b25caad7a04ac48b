"""What stops `portcullis serve` and `portcullis migrate` before a request is answered, and the messages an operator
acts on: a database that was never migrated, several workers on SQLite, a bad setting (named by its variable, with
what a valid value looks like), prod's missing secrets (with how to make each); `migrate` reads the database
settings only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.settings import DEV_COOKIE_SECRET, DatabaseSettings, Settings, UnusableSettingError
from store.migrate import current_revision, head_revision, upgrade
from tests.conftest import _fresh_postgres_database

GOOD_PROD = {
    "PORTCULLIS_ENV": "prod",
    "PORTCULLIS_API_KEY_PEPPER": "p" * 40,
    "PORTCULLIS_COOKIE_SECRET": "c" * 40,
    "PORTCULLIS_DATA_ENCRYPTION_KEY": "d" * 40,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PORTCULLIS_* variable and no `.env` from the surroundings leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("PORTCULLIS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `serve` would have handed to uvicorn: nothing when it refused."""
    import uvicorn

    started: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append((a, k)))
    return started


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, never migrated."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'never-migrated.db'}"
    else:
        yield _fresh_postgres_database(request.getfixturevalue("postgres_admin_url"))


# -- serve ------------------------------------------------------------------------------------------------------


def test_serve_refuses_an_unmigrated_database(
    unmigrated_url: str, monkeypatch: pytest.MonkeyPatch, uvicorn_runs: list[Any]
) -> None:
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", unmigrated_url)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--port", "1"])
    message = str(exc.value.code)
    assert "not migrated" in message
    assert "portcullis migrate" in message
    assert uvicorn_runs == []
    # the command it names is the fix
    assert cli.main(["migrate"]) == 0
    assert current_revision(unmigrated_url) == head_revision()
    assert cli.main(["serve", "--port", "1"]) == 0
    assert len(uvicorn_runs) == 1


def test_serve_refuses_a_database_behind_the_latest_revision(
    unmigrated_url: str, monkeypatch: pytest.MonkeyPatch, uvicorn_runs: list[Any]
) -> None:
    upgrade(unmigrated_url, "0014")
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", unmigrated_url)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    assert "at revision 0014" in str(exc.value.code)
    assert "portcullis migrate" in str(exc.value.code)
    assert uvicorn_runs == []


def test_serve_refuses_several_workers_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uvicorn_runs: list[Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade(url)
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", url)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--workers", "2"])
    message = str(exc.value.code)
    assert "--workers 2 on SQLite" in message
    assert "--workers 1" in message
    assert "PostgreSQL" in message
    assert "docs/deployment.md" in message
    assert uvicorn_runs == []
    assert cli.main(["serve", "--workers", "1"]) == 0


def test_serve_takes_several_workers_on_postgresql(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch, uvicorn_runs: list[Any]
) -> None:
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", postgresql_url)
    assert cli.main(["serve", "--workers", "2"]) == 0
    [(_, kwargs)] = uvicorn_runs
    assert kwargs["workers"] == 2


def test_serve_refuses_a_metrics_port_with_several_workers(
    postgresql_url: str, monkeypatch: pytest.MonkeyPatch, uvicorn_runs: list[Any]
) -> None:
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", postgresql_url)
    monkeypatch.setenv("PORTCULLIS_METRICS_PORT", "9464")
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--workers", "2"])
    assert "PORTCULLIS_METRICS_PORT" in str(exc.value.code)
    assert uvicorn_runs == []


# -- migrate ----------------------------------------------------------------------------------------------------


def test_migrate_in_prod_needs_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`migrate` reads the database settings only: prod's missing secrets are `serve`'s business."""
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    monkeypatch.setenv("PORTCULLIS_ENV", "prod")
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", url)
    monkeypatch.setenv("PORTCULLIS_COOKIE_SECRET", DEV_COOKIE_SECRET)
    assert cli.main(["migrate"]) == 0
    assert current_revision(url) == head_revision()
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    assert "PORTCULLIS_COOKIE_SECRET" in str(exc.value.code)


def test_migrate_process_in_prod_without_secrets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update({"PORTCULLIS_ENV": "prod", "PORTCULLIS_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"})
    done = subprocess.run(
        [sys.executable, "-c", "from gateway.cli import main; raise SystemExit(main())", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "database migrated" in done.stdout


def test_migrate_ignores_a_bad_setting_it_does_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting migrate does not use cannot stop it, even when it is wrong."""
    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS", "ten")
    assert cli.main(["migrate"]) == 0
    assert DatabaseSettings.load().database_url.endswith("x.db")


# -- bad settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "valid"),
    [
        ("PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS", "10", "a whole number at least 60, at most 3600 (default 900)"),
        ("PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS", "fifteen minutes", "a whole number at least 60"),
        ("PORTCULLIS_ENV", "production", "one of dev, test, prod"),
        ("PORTCULLIS_LIMITS_ON_REDIS_ERROR", "maybe", "one of closed, open"),
        ("PORTCULLIS_TRUSTED_PROXIES", "not-a-network", "addresses or CIDR ranges"),
        ("PORTCULLIS_SESSION_CACHE_TTL_SECONDS", "-1", "a number at least 0, at most 300"),
        ("PORTCULLIS_GRAPHIQL", "sometimes", "true or false"),
        ("PORTCULLIS_METRICS_PORT", "70000", "a whole number at least 1, at most 65535"),
        ("PORTCULLIS_PUBLIC_URL", "gateway.example.com/path", "an origin, like https://gateway.example.com"),
        ("PORTCULLIS_BLOCK_DURATIONS_SECONDS", "0", "positive whole numbers of seconds"),
    ],
)
def test_a_bad_setting_names_its_variable_and_a_valid_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, valid: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(UnusableSettingError) as exc:
        Settings.load()
    message = str(exc.value)
    assert f"{variable}: " in message
    assert valid in message
    field = variable.removeprefix("PORTCULLIS_").lower()
    assert f"\n{field}" not in message  # the field's name alone, as pydantic says it, is not the message


def test_every_bad_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS", "1")
    monkeypatch.setenv("PORTCULLIS_MAX_BODY_BYTES", "12")
    with pytest.raises(UnusableSettingError) as exc:
        Settings.load()
    assert "PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS" in str(exc.value)
    assert "PORTCULLIS_MAX_BODY_BYTES" in str(exc.value)


def test_a_bad_secret_is_never_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_SMTP_URL", "ftp://user:hunter2-secret@mail.example.com")
    monkeypatch.setenv("PORTCULLIS_DATABASE_POOL_SIZE", "s3cret-looking-value")
    with pytest.raises(UnusableSettingError) as exc:
        Settings.load()
    assert "hunter2-secret" not in str(exc.value)


def test_serve_process_names_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env["PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS"] = "5"
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
    assert "PORTCULLIS_ACCESS_TOKEN_TTL_SECONDS: input should be greater than or equal to 60" in done.stderr
    assert "Traceback" not in done.stderr


# -- prod's secrets ---------------------------------------------------------------------------------------------


def test_prod_refusal_says_how_to_make_each_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTCULLIS_ENV", "prod")
    monkeypatch.setenv("PORTCULLIS_METRICS_TOKEN", "short")
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve"])
    lines = str(exc.value.code).splitlines()
    by_variable = {
        name: next(line for line in lines if name in line)
        for name in (
            "PORTCULLIS_SIGNING_KEY",
            "PORTCULLIS_API_KEY_PEPPER",
            "PORTCULLIS_COOKIE_SECRET",
            "PORTCULLIS_DATA_ENCRYPTION_KEY",
            "PORTCULLIS_METRICS_TOKEN",
        )
    }
    assert "`portcullis keys generate > " in by_variable["PORTCULLIS_SIGNING_KEY"]
    assert "PORTCULLIS_SIGNING_KEY_FILE=" in by_variable["PORTCULLIS_SIGNING_KEY"]
    for name in ("PORTCULLIS_API_KEY_PEPPER", "PORTCULLIS_COOKIE_SECRET", "PORTCULLIS_DATA_ENCRYPTION_KEY"):
        assert "`portcullis keys secret`" in by_variable[name]


def test_the_commands_the_refusal_names_make_secrets_prod_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keys", "generate"]) == 0
    key_file = tmp_path / "signing-key.pem"
    key_file.write_text(capsys.readouterr().out)
    secrets = []
    for _ in range(3):
        assert cli.main(["keys", "secret"]) == 0
        secrets.append(capsys.readouterr().out.strip())
    assert len(set(secrets)) == 3
    assert all(len(s) >= 32 for s in secrets)
    for name, value in zip(
        ("PORTCULLIS_API_KEY_PEPPER", "PORTCULLIS_COOKIE_SECRET", "PORTCULLIS_DATA_ENCRYPTION_KEY"),
        secrets,
        strict=True,
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PORTCULLIS_ENV", "prod")
    monkeypatch.setenv("PORTCULLIS_SIGNING_KEY_FILE", str(key_file))
    assert Settings.load().is_prod


def test_serve_starts_on_an_unreachable_database_and_says_so(
    monkeypatch: pytest.MonkeyPatch, uvicorn_runs: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Unreachable is not unmigrated: the process starts (a database that comes up later is found by /readyz)."""
    from tests.services import free_port

    monkeypatch.setenv("PORTCULLIS_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    assert cli.main(["serve"]) == 0
    assert len(uvicorn_runs) == 1
    assert "the database is unreachable" in capsys.readouterr().err
