"""The TOTP protocol pieces: code shapes, the drift window, the URI, the QR code, recovery codes,
the atomic replay refusal, and which sessions an organization's `requireMfa` restricts."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pyotp
import pytest
from sqlalchemy import update

from identity.secrets import SecretBox
from identity.sessions import SessionPolicy, create_session, load_session
from identity.totp import (
    Code,
    CodeFormatError,
    CodeKind,
    TotpService,
    claim_step,
    matching_step,
    new_recovery_codes,
    new_secret,
    parse_code,
    provisioning_uri,
    qr_svg,
)
from store.db import Database
from store.models import Organization, User
from tests.conftest import make_tenant

NOW = 1_800_000_015.0  # 15 s into a step


def test_six_digits_are_a_totp_code_whatever_the_separators() -> None:
    for typed in ("123456", " 123 456 ", "123-456", "1 2 3 4 5 6", "\t123456"):
        assert parse_code(typed) == Code(CodeKind.TOTP, "123456")


def test_ten_base32_characters_are_a_recovery_code() -> None:
    assert parse_code("ABCDE-fgh23") == Code(CodeKind.RECOVERY, "abcdefgh23")
    assert parse_code("abcde fgh23") == Code(CodeKind.RECOVERY, "abcdefgh23")


ARABIC_INDIC = "\u0661\u0662\u0663\u0664\u0665\u0666"
FULLWIDTH = "\uff11\uff12\uff13\uff14\uff15\uff16"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "12345",
        "1234567",
        "abcdef",
        "12345x",
        ARABIC_INDIC,
        FULLWIDTH,
        "abcdefgh1!",
        "abcdefgh10",
        "0" * 65,
        "123456\x00",
    ],
)
def test_anything_else_is_malformed(bad: str) -> None:
    with pytest.raises(CodeFormatError):
        parse_code(bad)


def test_a_code_never_prints() -> None:
    assert "123456" not in repr(parse_code("123456"))


def test_the_window_is_one_step_either_side() -> None:
    secret = new_secret()
    totp = pyotp.TOTP(secret)
    step = int(NOW // 30)
    for offset in (-1, 0, 1):
        assert matching_step(secret, totp.generate_otp(step + offset), NOW) == step + offset
    for offset in (-3, -2, 2, 3):
        code = totp.generate_otp(step + offset)
        if code not in {totp.generate_otp(step + d) for d in (-1, 0, 1)}:
            assert matching_step(secret, code, NOW) is None
    assert matching_step(secret, totp.at(int(NOW)), NOW) == step


def test_the_secret_has_160_bits() -> None:
    secret = new_secret()
    assert len(secret) == 32
    assert len(set(new_secret() for _ in range(20))) == 20


def test_provisioning_uri_escapes_the_label() -> None:
    uri = provisioning_uri("JBSWY3DPEHPK3PXP", account="a b&c@x.test", issuer="Portcullis")
    assert uri.startswith("otpauth://totp/Portcullis:a%20b%26c@x.test?secret=JBSWY3DPEHPK3PXP&issuer=Portcullis")
    assert "digits=6" in uri
    assert "period=30" in uri


def test_the_qr_code_is_a_plain_svg() -> None:
    svg = qr_svg(provisioning_uri(new_secret(), account="<script>alert(1)</script>@x.test", issuer="Portcullis"))
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert {el.tag.rsplit("}", 1)[-1] for el in root.iter()} <= {"svg", "path", "rect"}
    assert "script" not in svg


def test_recovery_codes_are_ten_distinct_and_parse() -> None:
    codes = new_recovery_codes()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(parse_code(c).kind is CodeKind.RECOVERY for c in codes)


def test_recovery_code_hashes_are_keyed_and_normalised() -> None:
    box = SecretBox("k" * 40, purpose="totp")
    one, other = TotpService(box, b"pepper-one"), TotpService(box, b"pepper-two")
    assert one.hash_recovery_code("abcde-fgh23") == one.hash_recovery_code("ABCDE FGH23")
    assert one.hash_recovery_code("abcde-fgh23") != other.hash_recovery_code("abcde-fgh23")
    with pytest.raises(ValueError):
        TotpService(box, b"")


async def test_a_step_is_claimed_once_even_concurrently(database_url: str) -> None:
    t = await make_tenant(database_url)
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            await s.execute(
                update(User)
                .where(User.id == t.user_id)  # type: ignore[arg-type]
                .values(totp_secret_encrypted="x", mfa_enabled=True)
            )

        async def claim(step: int) -> bool:
            async with db.transaction() as s:
                return await claim_step(s, t.user_id, step)

        results = await asyncio.gather(*(claim(100) for _ in range(5)))
        assert sorted(results) == [False, False, False, False, True]
        assert not await claim(99)  # an earlier step of the window, after a later one
        assert await claim(101)
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("method", "enrolled", "restricted"),
    [
        ("password", False, True),
        ("password", True, False),
        ("oidc", False, False),
        ("saml", False, False),
    ],
)
async def test_require_mfa_restricts_only_unenrolled_password_sessions(
    database_url: str, method: str, enrolled: bool, restricted: bool
) -> None:
    t = await make_tenant(database_url)
    db = Database(database_url)
    now = datetime.now(UTC)
    try:
        async with db.transaction() as s:
            await s.execute(update(Organization).values(require_mfa=True))
            await s.execute(update(User).values(mfa_enabled=enrolled))
            issued = await create_session(
                s,
                user_id=t.user_id,
                organization_id=t.org_id,
                auth_method=method,
                client_ip=None,
                user_agent=None,
                policy=SessionPolicy(),
                now=now,
            )
        async with db.transaction() as s:
            info = await load_session(s, issued.session.id, now)
        assert info is not None
        assert info.mfa_enrollment_required is restricted
        async with db.transaction() as s:
            await s.execute(update(Organization).values(require_mfa=False))
            info = await load_session(s, issued.session.id, now)
        assert info is not None
        assert info.mfa_enrollment_required is False
    finally:
        await db.dispose()
