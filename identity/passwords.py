"""Password hashing (argon2id) and the password policy.

Hashing and verification run in a worker thread: an argon2id verification with the OWASP parameters
takes tens of milliseconds and must never block the event loop. Unknown accounts are "verified" against
a dummy hash so that the time an answer takes does not reveal whether an account exists.

Passwords are normalised to NFKC (NIST SP 800-63B §5.1.1.2) before hashing and checking; nothing is
truncated, so two passwords that differ anywhere never verify against each other.

An organization's security policy narrows the rules (`PasswordRules`): a longer minimum (never below
`MIN_LENGTH`), a history of refused earlier passwords, a maximum age. `breachedPasswordCheck` switches the
bundled list of breached passwords (about 20,000, most common first); switched off, the `FLOOR_LIST_SIZE`
most common of them are still refused: no policy admits `password1234`.
"""

from __future__ import annotations

import gzip
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import anyio.to_thread
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from authz.security_policy import SecurityPolicy

MIN_LENGTH = 12
MAX_LENGTH = 256
# Checked before any hashing: the bytes a single password may cost us.
MAX_BYTES = 1024
CONTEXT_WORDS = ("portcullis",)
# The most common passwords of the bundled list, refused whatever a policy says.
FLOOR_LIST_SIZE = 1000


class PasswordPolicyError(ValueError):
    """A new password the policy refuses; the message is safe to show the user."""


@dataclass(frozen=True, slots=True)
class HashParameters:
    memory_kib: int = 19_456
    time_cost: int = 2
    parallelism: int = 1


def normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@dataclass(frozen=True, slots=True)
class PasswordRules:
    """The password rules that apply to one person: the strictest of their organizations' policies."""

    min_length: int = MIN_LENGTH
    history: int = 0
    max_age_days: int | None = None
    breached_check: bool = True

    @classmethod
    def strictest(cls, policies: Iterable[SecurityPolicy]) -> PasswordRules:
        """The longest minimum, the longest history, the shortest maximum age, the breached list if any asks."""
        found = list(policies)
        if not found:
            return cls()
        ages = [p.password_max_age_days for p in found if p.password_max_age_days is not None]
        return cls(
            min_length=max(MIN_LENGTH, *(p.password_min_length for p in found)),
            history=max(p.password_history for p in found),
            max_age_days=min(ages) if ages else None,
            breached_check=any(p.breached_password_check for p in found),
        )


DEFAULT_RULES = PasswordRules()


def _passwords_list() -> list[str]:
    data = resources.files("identity").joinpath("data/common-passwords.txt.gz").read_bytes()
    return [line.strip().casefold() for line in gzip.decompress(data).decode().splitlines() if line.strip()]


@cache
def common_passwords() -> frozenset[str]:
    """The whole bundled list of breached passwords."""
    return frozenset(_passwords_list())


@cache
def floor_passwords() -> frozenset[str]:
    """The most common passwords of the bundled list: refused even with `breachedPasswordCheck` off."""
    return frozenset(_passwords_list()[:FLOOR_LIST_SIZE])


def check_policy(
    password: str,
    *,
    email: str | None = None,
    context: tuple[str, ...] = (),
    rules: PasswordRules = DEFAULT_RULES,
) -> None:
    """Refuse passwords that are too short, too long, the email, or on the breached-passwords list."""
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PasswordPolicyError(f"password must be at most {MAX_LENGTH} characters")
    pw = normalize(password)
    min_length = max(MIN_LENGTH, rules.min_length)
    if len(pw) < min_length:
        policy = " (the organization's password policy)" if min_length > MIN_LENGTH else ""
        raise PasswordPolicyError(f"password must be at least {min_length} characters{policy}")
    if len(pw) > MAX_LENGTH:
        raise PasswordPolicyError(f"password must be at most {MAX_LENGTH} characters")
    if "\x00" in pw:
        raise PasswordPolicyError("password must not contain a NUL character")
    folded = pw.casefold()
    if email:
        local = email.casefold()
        if folded == local or folded == local.split("@", 1)[0]:
            raise PasswordPolicyError("password must not be the email address")
    if folded in (common_passwords() if rules.breached_check else floor_passwords()):
        raise PasswordPolicyError("password is too common: it appears in lists of breached passwords")
    for word in (*CONTEXT_WORDS, *context):
        word = word.casefold()
        if len(word) >= 4 and folded in {word, word + "123", word + "1234", word + "12345"}:
            raise PasswordPolicyError("password is too easy to guess")


class PasswordHasherService:
    def __init__(self, params: HashParameters | None = None) -> None:
        p = params or HashParameters()
        self._hasher = PasswordHasher(
            time_cost=p.time_cost, memory_cost=p.memory_kib, parallelism=p.parallelism, type=Type.ID
        )
        self._dummy_hash = self._hasher.hash("portcullis dummy password for timing")

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(normalize(password))

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self.hash_sync, password)

    def _verify_sync(self, stored_hash: str | None, password: str) -> bool:
        if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            self._verify_quietly(self._dummy_hash, "x")
            return False
        if stored_hash is None:
            self._verify_quietly(self._dummy_hash, password)
            return False
        return self._verify_quietly(stored_hash, password)

    def _verify_quietly(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, normalize(password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when the password matches; a `None` hash runs a dummy verification and is False."""
        return await anyio.to_thread.run_sync(self._verify_sync, stored_hash, password)

    async def burn(self) -> None:
        """Spend one verification's time without checking anything (locked accounts)."""
        await anyio.to_thread.run_sync(self._verify_quietly, self._dummy_hash, "x")

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True
