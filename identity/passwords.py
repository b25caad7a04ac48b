"""Password hashing (argon2id) and the password policy.

Hashing and verification run in a worker thread: an argon2id verification with the OWASP parameters
takes tens of milliseconds and must never block the event loop. Unknown accounts are "verified" against
a dummy hash so that the time an answer takes does not reveal whether an account exists.

Passwords are normalised to NFKC (NIST SP 800-63B §5.1.1.2) before hashing and checking; nothing is
truncated, so two passwords that differ anywhere never verify against each other.
"""

from __future__ import annotations

import gzip
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

import anyio.to_thread
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
MAX_LENGTH = 256
# Checked before any hashing: the bytes a single password may cost us.
MAX_BYTES = 1024
CONTEXT_WORDS = ("portcullis",)


class PasswordPolicyError(ValueError):
    """A new password the policy refuses; the message is safe to show the user."""


@dataclass(frozen=True, slots=True)
class HashParameters:
    memory_kib: int = 19_456
    time_cost: int = 2
    parallelism: int = 1


def normalize(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@cache
def common_passwords() -> frozenset[str]:
    data = resources.files("identity").joinpath("data/common-passwords.txt.gz").read_bytes()
    return frozenset(line.strip().casefold() for line in gzip.decompress(data).decode().splitlines() if line)


def check_policy(password: str, *, email: str | None = None, context: tuple[str, ...] = ()) -> None:
    """Refuse passwords that are too short, too long, the email, or on the common-passwords list."""
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PasswordPolicyError(f"password must be at most {MAX_LENGTH} characters")
    pw = normalize(password)
    if len(pw) < MIN_LENGTH:
        raise PasswordPolicyError(f"password must be at least {MIN_LENGTH} characters")
    if len(pw) > MAX_LENGTH:
        raise PasswordPolicyError(f"password must be at most {MAX_LENGTH} characters")
    if "\x00" in pw:
        raise PasswordPolicyError("password must not contain a NUL character")
    folded = pw.casefold()
    if email:
        local = email.casefold()
        if folded == local or folded == local.split("@", 1)[0]:
            raise PasswordPolicyError("password must not be the email address")
    if folded in common_passwords():
        raise PasswordPolicyError("password is too common")
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
