"""TOTP second factor (RFC 6238, through pyotp) and single-use recovery codes.

- The seed is 160 random bits (RFC 4226 recommends 160), stored encrypted (`SecretBox`, purpose
  "totp") because the gateway must read it back to compute codes.
- A code is accepted for the current 30-second step or one step either side (clock drift).
- RFC 6238 section 5.2: "the verifier MUST NOT accept the second attempt of the OTP after the
  successful validation has been issued for the first OTP". The last accepted step is kept on the user
  and advanced by one conditional UPDATE, so of two concurrent submissions of one code exactly one
  succeeds, and no code of that step or an earlier one is accepted again.
- Recovery codes are ten random 50-bit codes (`xxxxx-xxxxx`, base32). Being under 112 bits they are
  hashed (ASVS 6.5.2): HMAC-SHA256 keyed with the server's pepper, so a copy of the database alone
  does not allow an offline search. Each is spent by one conditional UPDATE.
- What a user types is normalised: spaces and dashes are dropped and letters lower-cased; six digits
  are a TOTP code, ten base32 characters a recovery code, anything else is malformed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import quote

import pyotp
import segno
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from identity.secrets import SecretBox
from store.models import MfaRecoveryCode, User, new_id

DIGITS = 6
PERIOD_SECONDS = 30
DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
RECOVERY_CODE_LENGTH = 10
# the longest input looked at; anything longer is refused by its length alone
MAX_CODE_INPUT = 64
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_SEPARATORS = str.maketrans("", "", " -\t")


class CodeKind(StrEnum):
    TOTP = "totp"
    RECOVERY = "recovery"


class CodeFormatError(ValueError):
    """The input is neither a TOTP code nor a recovery code by its shape; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class Code:
    kind: CodeKind
    value: str

    def __repr__(self) -> str:  # never print a code
        return f"Code({self.kind.value})"


def parse_code(raw: str) -> Code:
    """A TOTP or recovery code from what the user typed (spaces and dashes allowed)."""
    if len(raw) > MAX_CODE_INPUT:
        raise CodeFormatError("the code is too long")
    value = raw.translate(_SEPARATORS).lower()
    if len(value) == DIGITS and value.isascii() and value.isdigit():
        return Code(CodeKind.TOTP, value)
    if len(value) == RECOVERY_CODE_LENGTH and all(c in _BASE32 for c in value):
        return Code(CodeKind.RECOVERY, value)
    raise CodeFormatError(f"a code is {DIGITS} digits, or a recovery code of {RECOVERY_CODE_LENGTH} characters")


def new_secret() -> str:
    return pyotp.random_base32(32)


def current_step(now: float) -> int:
    return int(now // PERIOD_SECONDS)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step whose code `code` is, within the allowed drift; every candidate is compared."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD_SECONDS)
    step = current_step(now)
    found: int | None = None
    for candidate in range(step - DRIFT_STEPS, step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            found = candidate
    return found


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """The `otpauth://` URI authenticator apps read (Key Uri Format)."""
    label = quote(f"{issuer}:{account}", safe="@:")
    return (
        f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer, safe='')}"
        f"&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECONDS}"
    )


def qr_svg(uri: str) -> str:
    """The URI as a QR code, a standalone SVG document: paths only, no script, no external reference."""
    out = io.BytesIO()
    segno.make(uri, micro=False, error="m").save(out, kind="svg", scale=4, xmldecl=False, svgns=True, nl=False)
    return out.getvalue().decode("ascii")


def new_recovery_codes() -> list[str]:
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_BASE32) for _ in range(RECOVERY_CODE_LENGTH))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


class TotpService:
    """What the TOTP handling needs from the configuration: the seed's box, the pepper, a clock."""

    def __init__(
        self, box: SecretBox, pepper: bytes, *, issuer: str = "Portcullis", clock: Callable[[], float] = time.time
    ) -> None:
        if not pepper:
            raise ValueError("a pepper is required")
        self.box = box
        self.pepper = pepper
        self.issuer = issuer
        self.clock = clock

    def hash_recovery_code(self, code: str) -> str:
        normalized = code.translate(_SEPARATORS).lower()
        return hmac.new(self.pepper, b"portcullis:recovery-code:" + normalized.encode(), hashlib.sha256).hexdigest()

    def step_of(self, encrypted_secret: str, code: str) -> int | None:
        return matching_step(self.box.decrypt(encrypted_secret), code, self.clock())


async def claim_step(db: AsyncSession, user_id: str, step: int) -> bool:
    """Record `step` as the user's last accepted one, unless it (or a later one) already was."""
    result = await db.execute(
        update(User)
        .where(
            col(User.id) == user_id,
            col(User.totp_secret_encrypted).is_not(None),
            (col(User.totp_last_used_step).is_(None)) | (col(User.totp_last_used_step) < step),
        )
        .values(totp_last_used_step=step)
    )
    return (getattr(result, "rowcount", 0) or 0) == 1


async def spend_recovery_code(db: AsyncSession, user_id: str, code_hash: str, now: datetime) -> bool:
    result = await db.execute(
        update(MfaRecoveryCode)
        .where(
            col(MfaRecoveryCode.user_id) == user_id,
            col(MfaRecoveryCode.code_hash) == code_hash,
            col(MfaRecoveryCode.used_at).is_(None),
        )
        .values(used_at=now)
    )
    return (getattr(result, "rowcount", 0) or 0) == 1


async def verify_code(db: AsyncSession, service: TotpService, user: User, code: Code, now: datetime) -> bool:
    """Check and spend a second factor of an enrolled user: a TOTP code once, a recovery code once."""
    if not user.mfa_enabled or user.totp_secret_encrypted is None:
        return False
    if code.kind is CodeKind.RECOVERY:
        return await spend_recovery_code(db, user.id, service.hash_recovery_code(code.value), now)
    step = service.step_of(user.totp_secret_encrypted, code.value)
    if step is None:
        return False
    return await claim_step(db, user.id, step)


async def replace_recovery_codes(db: AsyncSession, service: TotpService, user_id: str, now: datetime) -> list[str]:
    """A fresh set of recovery codes for the user (the old ones stop working); the codes in clear, once."""
    await drop_recovery_codes(db, user_id)
    codes = new_recovery_codes()
    await db.execute(
        insert(MfaRecoveryCode),
        [
            {"id": new_id(), "user_id": user_id, "code_hash": service.hash_recovery_code(c), "created_at": now}
            for c in codes
        ],
    )
    return codes


async def drop_recovery_codes(db: AsyncSession, user_id: str) -> None:
    await db.execute(delete(MfaRecoveryCode).where(col(MfaRecoveryCode.user_id) == user_id))


async def unused_recovery_codes(db: AsyncSession, user_id: str) -> int:
    result = await db.execute(
        select(func.count())
        .select_from(MfaRecoveryCode)
        .where(col(MfaRecoveryCode.user_id) == user_id, col(MfaRecoveryCode.used_at).is_(None))
    )
    return int(result.scalar_one())
