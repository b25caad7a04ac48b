"""Configuration: one pydantic-settings class, read once and handed to `create_app(settings)`.

Every variable has the prefix `PORTCULLIS_` and may also come from a `.env` file. The defaults serve
the embedded mode on a laptop; `PORTCULLIS_ENV=prod` refuses to start on any default secret.
"""

from __future__ import annotations

import ipaddress
from email.utils import formataddr, parseaddr
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.cors import CorsPolicy, CorsSettingError, cors_policy
from gateway.settings_errors import explain
from gateway.smtp_url import STARTTLS_MODES, SmtpServer, parse_smtp_url
from gateway.stream_settings import AuditStreamSettings
from identity.outbound import parse_allowed_hosts

__all__ = ["STARTTLS_MODES", "DatabaseSettings", "Settings", "SmtpServer", "parse_smtp_url"]

DEV_PEPPER = "dev-only-api-key-pepper-change-me"
DEV_COOKIE_SECRET = "dev-only-cookie-secret-change-me"
DEV_DATA_KEY = "dev-only-data-encryption-key-change-me"
DEV_KEY_FILE = Path(".portcullis/dev-signing-key.pem")
DEFAULT_DATABASE_URL = "sqlite:///./portcullis.db"
# how prod's refusal says to make each secret
MAKE_SECRET = "make one with `portcullis keys secret`"
MAKE_SIGNING_KEY = (
    "make one with `portcullis keys generate > /etc/portcullis/signing-key.pem` and set "
    "PORTCULLIS_SIGNING_KEY_FILE=/etc/portcullis/signing-key.pem"
)


class Environment(StrEnum):
    DEV = "dev"
    TEST = "test"
    PROD = "prod"


class OnRedisError(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class InsecureSettingsError(RuntimeError):
    pass


class UnusableSettingError(InsecureSettingsError):
    """A value that cannot be used, refused with a message that names the variable but never repeats the
    value (pydantic's own errors would: an SMTP URL carries a password)."""


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class _Loadable(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTCULLIS_", env_file=".env", extra="ignore")

    @classmethod
    def load(cls, **values: Any) -> Self:
        """The settings from the environment (and `.env`); a value that does not validate is refused with a
        message naming its variable and what a valid value looks like (`UnusableSettingError`)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise UnusableSettingError(explain(exc, cls)) from None


class DatabaseSettings(_Loadable):
    """What `portcullis migrate` reads: the database and nothing else, so that it runs where the secrets of
    the gateway are not set."""

    database_url: str = DEFAULT_DATABASE_URL
    migration_database_url: str | None = None


class Settings(AuditStreamSettings, _Loadable):
    env: Environment = Environment.DEV
    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # PostgreSQL: `portcullis migrate` connects with this URL (the tables' owner) when set, then grants
    # the role of `database_url` what the application needs; the audit table gets INSERT and SELECT only
    migration_database_url: str | None = None
    redis_url: str | None = None
    redis_max_connections: int = Field(default=100, ge=2, le=10_000)

    # Token signing: the current RSA private key (PEM, or a file holding it) and previous keys, whose
    # tokens stay valid until they expire. See docs/configuration.md, "Rotating the signing key".
    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    previous_signing_key_files: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    issuer: str = "portcullis"
    audience: str = "portcullis-api"
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    access_token_max_lifetime_seconds: int = Field(default=3600, ge=60, le=86_400)
    session_absolute_lifetime_seconds: int = Field(default=14 * 86_400, ge=300)
    refresh_token_idle_seconds: int = Field(default=7 * 86_400, ge=300)
    session_cache_ttl_seconds: float = Field(default=30.0, ge=0, le=300)

    api_key_pepper: SecretStr = SecretStr(DEV_PEPPER)
    # how long a verified API key is trusted without a database read; revocation does not wait for it
    api_key_cache_ttl_seconds: float = Field(default=10.0, ge=0, le=60)
    api_key_last_used_interval_seconds: float = Field(default=60.0, ge=1, le=3600)
    cookie_secret: SecretStr = SecretStr(DEV_COOKIE_SECRET)
    # encrypts the secrets kept for reading back (OIDC client secrets, TOTP seeds); previous keys still decrypt
    data_encryption_key: SecretStr = SecretStr(DEV_DATA_KEY)
    previous_data_encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # argon2id parameters (OWASP: m=19 MiB, t=2, p=1)
    password_hash_memory_kib: int = Field(default=19_456, ge=1024)
    password_hash_time_cost: int = Field(default=2, ge=1)
    password_hash_parallelism: int = Field(default=1, ge=1)

    lockout_threshold: int = Field(default=5, ge=1)
    lockout_window_seconds: int = Field(default=900, ge=60)
    lockout_base_seconds: int = Field(default=60, ge=1)
    lockout_max_seconds: int = Field(default=900, ge=1)
    lockout_account_ceiling: int = Field(default=50, ge=1)
    # an address where the account signed in within this many days passes the account's ceiling
    lockout_trusted_address_days: int = Field(default=90, ge=1)

    # admission (docs/limits.md): what tenant limits do when Redis fails (login limits always fail closed)
    limits_on_redis_error: OnRedisError = OnRedisError.CLOSED
    anonymous_requests_per_minute: int = Field(default=60, ge=0)
    login_attempts_per_account_per_minute: int = Field(default=10, ge=1)
    login_attempts_per_address_per_minute: int = Field(default=30, ge=1)
    limits_cache_ttl_seconds: float = Field(default=300.0, ge=0, le=3600)
    usage_flush_seconds: float = Field(default=10.0, ge=0.05, le=3600)
    # the public HTTP routes, per client address and route (docs/limits.md, "Limits of the HTTP routes")
    sso_start_per_minute: int = Field(default=30, ge=1)
    oidc_callback_per_minute: int = Field(default=30, ge=1)
    saml_metadata_per_minute: int = Field(default=60, ge=1)
    saml_acs_per_minute: int = Field(default=30, ge=1)  # each one verifies an XML signature
    report_downloads_per_minute: int = Field(default=120, ge=1)
    # address blocks (docs/address-blocking.md): CIDRs never blocked (the trusted proxies join them), the
    # periodic reload, each abuse signal's threshold (0: off) and window, the automatic blocks' durations
    block_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    block_reload_seconds: float = Field(default=30.0, ge=1, le=3600)
    block_sign_in_accounts: int = Field(default=20, ge=0)
    block_sign_in_window_seconds: int = Field(default=600, ge=10, le=86_400)
    block_invalid_credentials: int = Field(default=100, ge=0)
    block_invalid_credentials_window_seconds: int = Field(default=60, ge=10, le=86_400)
    block_rate_limited: int = Field(default=300, ge=0)
    block_rate_limited_window_seconds: int = Field(default=300, ge=10, le=86_400)
    block_durations_seconds: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [900, 3600, 86_400])
    block_repeat_days: int = Field(default=30, ge=1, le=365)

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # pages of other origins that may call the gateway (docs/browsers.md): exact origins, comma-separated, or
    # `*` (any, never with credentials); credentials default to yes with exact origins; preflights cached
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool | None = None
    cors_max_age_seconds: int = Field(default=600, ge=0, le=86_400)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    graphiql: bool | None = None
    introspection: bool | None = None
    field_suggestions: bool | None = None
    reject_unauthorized: bool = False
    # the team's permissions and GraphQL upstreams (docs/upstreams.md); none when unset
    upstreams_file: Path | None = None

    # Traces (docs/observability.md): exported over OTLP/HTTP to this URL (the standard OTEL_EXPORTER_OTLP_*
    # variables when unset; nothing exported without either); a `traceparent` is continued only from these
    # addresses (the trusted proxies when empty)
    otel_exporter_otlp_endpoint: str | None = None
    otel_service_name: str = "portcullis"
    trace_trusted_callers: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Single sign-on and browser sessions (docs/sso.md). The public URL is the gateway's origin as browsers
    # and identity providers reach it: the OIDC redirect URI is built from it, never from the Host header.
    public_url: str = "http://127.0.0.1:8000"
    # relative path prefixes a browser may be sent back to after SSO (`return_to`); the first is the default
    frontend_return_paths: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["/"])
    browser_session_idle_seconds: int = Field(default=30 * 60, ge=60, le=86_400)
    browser_session_absolute_seconds: int = Field(default=12 * 3600, ge=300, le=30 * 86_400)
    session_cookie_secure: bool = True
    oidc_http_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    oidc_jwks_refetch_interval_seconds: float = Field(default=60.0, ge=0, le=3600)
    sso_state_ttl_seconds: int = Field(default=600, ge=60, le=600)
    # URLs fetched on a tenant's say (docs/sso.md, "Addresses the gateway will not fetch"): the guard refuses
    # non-public addresses; on in prod (which refuses to turn it off), off elsewhere unless set
    outbound_guard: bool | None = None
    # on-premises hosts the guard lets through: host names, addresses or CIDR ranges, comma-separated
    outbound_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Outgoing mail (docs/email.md). Without an SMTP URL, messages stay in the local mailbox
    # (`portcullis mail list`). The application URL is where emailed links lead (the frontend).
    smtp_url: SecretStr | None = None
    mail_from: str | None = None
    app_url: str | None = None
    mail_product_name: str = Field(default="Portcullis", min_length=1, max_length=100)
    mail_poll_seconds: float = Field(default=5.0, ge=0.01, le=3600)
    # scheduled reports (gateway/report_scheduler.py): how often a process looks for due schedules, and how
    # long its claim on one lasts (longer than a generation takes)
    report_schedule_poll_seconds: float = Field(default=60.0, ge=0.01, le=86_400)
    report_schedule_lease_seconds: float = Field(default=600.0, ge=1, le=86_400)
    # retention (gateway/retention.py): how often a process tries to run the pruning job, how long its lease
    # lasts, how often it stores a signed audit checkpoint, and the rows deleted per transaction
    retention_poll_seconds: float = Field(default=3600.0, ge=0.01, le=7 * 86_400)
    retention_lease_seconds: float = Field(default=600.0, ge=1, le=86_400)
    retention_checkpoint_seconds: float = Field(default=86_400.0, ge=1, le=30 * 86_400)
    retention_batch_size: int = Field(default=1000, ge=1, le=100_000)
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    mail_max_attempts: int = Field(default=12, ge=1, le=1000)
    mail_retry_seconds: float = Field(default=30.0, ge=0.01, le=86_400)
    mail_retry_max_seconds: float = Field(default=3600.0, ge=0.01, le=7 * 86_400)

    # Security events (docs/security-events.md): who is emailed for which severities (empty: nobody), and
    # how webhook deliveries are attempted (the delays between attempts: one more attempt than delays)
    security_alert_email_severities: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["high", "critical"]
    )
    webhook_poll_seconds: float = Field(default=2.0, ge=0.01, le=3600)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_retry_schedule_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0, 21_600.0, 43_200.0]
    )
    webhook_disable_after_failures: int = Field(default=5, ge=1, le=1000)

    # Signals (docs/observability.md). /metrics asks for this bearer token when it is set; prod refuses /metrics
    # on the API port without it. With a metrics port, the process also serves /metrics there (on metrics_host),
    # with no token: a port the scraper reaches and callers do not.
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    metrics_host: str = "127.0.0.1"
    # one JSON line per request on the `portcullis.access` logger
    access_log: bool = True

    demo_seed: bool = True
    log_level: str = "INFO"

    @field_validator(
        "trusted_proxies",
        "trace_trusted_callers",
        "cors_allowed_origins",
        "previous_signing_key_files",
        "previous_data_encryption_keys",
        "frontend_return_paths",
        "outbound_allowed_hosts",
        "block_allowlist",
        "block_durations_seconds",
        "security_alert_email_severities",
        "webhook_retry_schedule_seconds",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("security_alert_email_severities")
    @classmethod
    def _severities(cls, value: list[str]) -> list[str]:
        value = [v.strip().lower() for v in value]
        if set(value) - {"low", "medium", "high", "critical"}:
            raise ValueError("severities are low, medium, high or critical, comma-separated")
        return value

    @field_validator("webhook_retry_schedule_seconds")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not 1 <= len(value) <= 50 or any(not 0 < v <= 7 * 86_400 for v in value):
            raise ValueError("1 to 50 delays in seconds, each above 0 and at most a week, comma-separated")
        return value

    @field_validator("trusted_proxies", "trace_trusted_callers", "block_allowlist")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("block_durations_seconds")
    @classmethod
    def _durations(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1:
            raise ValueError("at least one duration, each a positive number of seconds")
        return value

    @field_validator("outbound_allowed_hosts")
    @classmethod
    def _outbound_hosts(cls, value: list[str]) -> list[str]:
        parse_allowed_hosts(value)
        return value

    @field_validator("frontend_return_paths")
    @classmethod
    def _return_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or path.startswith("//") or "\\" in path or "?" in path or "#" in path:
                raise ValueError(f"frontend return paths are relative paths starting with one '/': {path!r}")
        if not value:
            raise ValueError("at least one frontend return path is needed")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("the public URL is an origin, like https://gateway.example.com")
        return value.rstrip("/")

    @field_validator("smtp_url", mode="before")
    @classmethod
    def _smtp_url(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if not isinstance(raw, str):
            raise UnusableSettingError("PORTCULLIS_SMTP_URL must be a URL")
        try:
            parse_smtp_url(raw)
        except ValueError as exc:
            raise UnusableSettingError(f"PORTCULLIS_SMTP_URL: {exc}") from None
        return raw.strip()

    @field_validator("mail_from")
    @classmethod
    def _mail_from(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        _name, address = parseaddr(value)
        local, at, domain = address.rpartition("@")
        if (
            not at
            or not local
            or not domain
            or any(c.isspace() or c in "<>," for c in address)
            or any(ord(c) < 32 for c in value)
        ):
            raise ValueError("PORTCULLIS_MAIL_FROM is an address, like 'Portcullis <no-reply@example.com>'")
        return value

    @field_validator("app_url")
    @classmethod
    def _app_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("PORTCULLIS_APP_URL is the frontend's URL, like https://app.example.com")
        return value.strip().rstrip("/")

    @field_validator("mail_product_name")
    @classmethod
    def _product_name(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("PORTCULLIS_MAIL_PRODUCT_NAME is one line of text")
        return value

    @model_validator(mode="after")
    def _cors(self) -> Settings:
        try:
            self.cors_policy()
        except CorsSettingError as exc:
            raise UnusableSettingError(str(exc)) from None
        return self

    def cors_policy(self) -> CorsPolicy | None:
        return cors_policy(self.cors_allowed_origins, self.cors_allow_credentials, self.cors_max_age_seconds)

    @model_validator(mode="after")
    def _mail_settings(self) -> Settings:
        if self.smtp_url is not None and self.mail_from is None:
            raise UnusableSettingError("PORTCULLIS_MAIL_FROM is required when PORTCULLIS_SMTP_URL is set")
        if self.mail_retry_max_seconds < self.mail_retry_seconds:
            raise UnusableSettingError("PORTCULLIS_MAIL_RETRY_MAX_SECONDS is less than PORTCULLIS_MAIL_RETRY_SECONDS")
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.env is not Environment.PROD:
            return self
        problems = []
        if self.signing_key is None and self.signing_key_file is None:
            problems.append(f"PORTCULLIS_SIGNING_KEY (or _FILE) is not set: {MAKE_SIGNING_KEY}")
        if self.signing_key_file is not None and self.signing_key_file.resolve() == DEV_KEY_FILE.resolve():
            problems.append(f"PORTCULLIS_SIGNING_KEY_FILE points at the development key: {MAKE_SIGNING_KEY}")
        if (
            self.api_key_pepper.get_secret_value() in ("", DEV_PEPPER)
            or len(self.api_key_pepper.get_secret_value()) < 32
        ):
            problems.append(
                f"PORTCULLIS_API_KEY_PEPPER is missing, the default, or shorter than 32 characters: {MAKE_SECRET}"
            )
        if (
            self.cookie_secret.get_secret_value() in ("", DEV_COOKIE_SECRET)
            or len(self.cookie_secret.get_secret_value()) < 32
        ):
            problems.append(
                f"PORTCULLIS_COOKIE_SECRET is missing, the default, or shorter than 32 characters: {MAKE_SECRET}"
            )
        if (
            self.data_encryption_key.get_secret_value() in ("", DEV_DATA_KEY)
            or len(self.data_encryption_key.get_secret_value()) < 32
        ):
            problems.append(
                f"PORTCULLIS_DATA_ENCRYPTION_KEY is missing, the default, or shorter than 32 characters: {MAKE_SECRET}"
            )
        token = self.metrics_token.get_secret_value() if self.metrics_token is not None else None
        if token is not None and len(token) < 32:
            problems.append(f"PORTCULLIS_METRICS_TOKEN is shorter than 32 characters: {MAKE_SECRET}")
        if not self.session_cookie_secure:
            problems.append("PORTCULLIS_SESSION_COOKIE_SECURE must stay true")
        if self.outbound_guard is False:
            problems.append(
                "PORTCULLIS_OUTBOUND_GUARD must stay on (name on-premises hosts in PORTCULLIS_OUTBOUND_ALLOWED_HOSTS)"
            )
        if problems:
            raise InsecureSettingsError("refusing to start in prod:\n  - " + "\n  - ".join(problems))
        return self

    @property
    def is_prod(self) -> bool:
        return self.env is Environment.PROD

    @property
    def smtp(self) -> SmtpServer | None:
        return None if self.smtp_url is None else parse_smtp_url(self.smtp_url.get_secret_value())

    @property
    def links_url(self) -> str:
        """Where emailed links lead: PORTCULLIS_APP_URL, else the public URL."""
        return self.app_url or self.public_url

    @property
    def mail_sender(self) -> str:
        return self.mail_from or formataddr((self.mail_product_name, "no-reply@localhost"))

    @property
    def outbound_guard_enabled(self) -> bool:
        return self.is_prod if self.outbound_guard is None else self.outbound_guard

    @property
    def graphiql_enabled(self) -> bool:
        return (not self.is_prod) if self.graphiql is None else self.graphiql and not self.is_prod

    @property
    def anonymous_introspection(self) -> bool:
        return (not self.is_prod) if self.introspection is None else self.introspection

    @property
    def suggestions_enabled(self) -> bool:
        return (not self.is_prod) if self.field_suggestions is None else self.field_suggestions

    def signing_key_pems(self) -> tuple[str, list[str]]:
        """The current key and the previous ones; a dev key is created on first use outside prod."""
        if self.signing_key is not None:
            current = self.signing_key.get_secret_value()
        elif self.signing_key_file is not None:
            current = self.signing_key_file.read_text()
        else:
            current = _dev_key()
        previous = [p.read_text() for p in self.previous_signing_key_files]
        return current, previous


def _dev_key() -> str:
    from identity.tokens import generate_private_key_pem

    if DEV_KEY_FILE.exists():
        return DEV_KEY_FILE.read_text()
    DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    pem = generate_private_key_pem()
    DEV_KEY_FILE.touch(mode=0o600)
    DEV_KEY_FILE.write_text(pem)
    return pem
