"""Password policy and argon2id hashing, without the database (C-117)."""

from __future__ import annotations

import unicodedata

import pytest

from identity.passwords import (
    MAX_BYTES,
    MAX_LENGTH,
    MIN_LENGTH,
    HashParameters,
    PasswordHasherService,
    PasswordPolicyError,
    check_policy,
    normalize,
)
from tests.conftest import FAST_HASH

GOOD = "correct horse battery staple"


@pytest.fixture(scope="module")
def hasher() -> PasswordHasherService:
    return PasswordHasherService(FAST_HASH)


class CountingHasher(PasswordHasherService):
    """Counts the argon2 verifications actually run, dummy ones included."""

    def __init__(self, params: HashParameters | None = None) -> None:
        super().__init__(params)
        self.verified: list[str] = []

    def _verify_quietly(self, stored_hash: str, password: str) -> bool:
        self.verified.append(stored_hash)
        return super()._verify_quietly(stored_hash, password)


# -- policy ---------------------------------------------------------------------------------------


def test_policy_accepts_a_long_passphrase() -> None:
    check_policy(GOOD, email="someone@example.test")


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("short pass", f"at least {MIN_LENGTH}"),
        ("x" * (MAX_LENGTH + 1), f"at most {MAX_LENGTH}"),
        ("é" * (MAX_BYTES // 2 + 1), f"at most {MAX_LENGTH}"),  # over the byte cap before normalising
        ("with a nul \x00 in the middle", "NUL"),
        ("123456123456", "too common"),
        ("Portcullis1234", "too easy"),
    ],
    ids=["too-short", "too-long", "too-many-bytes", "nul", "common", "context-word"],
)
def test_policy_refusals(password: str, fragment: str) -> None:
    """C-117: each refusal is a PasswordPolicyError with a message safe to show."""
    with pytest.raises(PasswordPolicyError, match=fragment):
        check_policy(password)


def test_policy_refuses_the_email_and_its_local_part() -> None:
    email = "longusername@example.test"
    for candidate in (email, email.upper(), "LongUserName"):
        with pytest.raises(PasswordPolicyError, match="email"):
            check_policy(candidate, email=email)


def test_policy_counts_characters_after_nfkc() -> None:
    """C-117: the length rule applies to the normalised form (a ligature is two letters)."""
    eleven_plus_ligature = "abcdefghij" + "\ufb01"  # "ﬁ" → "fi" under NFKC: 12 characters
    assert len(eleven_plus_ligature) == 11
    check_policy(eleven_plus_ligature)


def test_policy_length_bounds_are_inclusive() -> None:
    check_policy("q7#Zr!m2Lp9w")  # exactly MIN_LENGTH
    check_policy("q7#Zr!m2Lp9w" * (MAX_LENGTH // 12) + "x" * (MAX_LENGTH % 12))  # exactly MAX_LENGTH


# -- hashing --------------------------------------------------------------------------------------


def test_hash_is_argon2id_with_the_configured_parameters(hasher: PasswordHasherService) -> None:
    stored = hasher.hash_sync(GOOD)
    assert stored.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert GOOD not in stored
    assert hasher.hash_sync(GOOD) != stored  # salted


async def test_verify_right_and_wrong(hasher: PasswordHasherService) -> None:
    stored = await hasher.hash(GOOD)
    assert await hasher.verify(stored, GOOD) is True
    assert await hasher.verify(stored, GOOD + " ") is False
    assert await hasher.verify(stored, "") is False


async def test_garbage_hash_is_a_mismatch_not_an_error(hasher: PasswordHasherService) -> None:
    for stored in ("", "not a hash", "$argon2id$v=19$m=1024,t=1,p=1$broken", "$2b$12$" + "a" * 53):
        assert await hasher.verify(stored, GOOD) is False


async def test_unknown_account_still_runs_one_verification() -> None:
    """C-112: a `None` hash is verified against the dummy hash, so the time taken is the same."""
    counting = CountingHasher(FAST_HASH)
    assert await counting.verify(None, GOOD) is False
    assert len(counting.verified) == 1
    await counting.burn()
    assert len(counting.verified) == 2


async def test_oversized_password_costs_one_dummy_verification_of_a_short_input() -> None:
    """C-117: the hasher never feeds more than MAX_BYTES to argon2, whatever the caller checked."""
    counting = CountingHasher(FAST_HASH)
    stored = counting.hash_sync(GOOD)
    assert await counting.verify(stored, GOOD + "x" * MAX_BYTES) is False
    assert counting.verified == [counting._dummy_hash]


async def test_difference_after_byte_72_matters(hasher: PasswordHasherService) -> None:
    """C-117: no bcrypt-style truncation at 72 bytes."""
    base = "A" * 72
    stored = await hasher.hash(base + "1")
    assert len((base + "1").encode()) == 73
    assert await hasher.verify(stored, base + "1") is True
    assert await hasher.verify(stored, base + "2") is False
    assert await hasher.verify(stored, base) is False
    long_one = "B" * 200
    stored = await hasher.hash(long_one)
    assert await hasher.verify(stored, "B" * 199 + "C") is False


async def test_nul_byte_is_part_of_the_password(hasher: PasswordHasherService) -> None:
    """C-117: a NUL byte neither truncates nor raises; it is one more character."""
    with_nul = "before the nul\x00after the nul"
    stored = await hasher.hash(with_nul)
    assert await hasher.verify(stored, with_nul) is True
    assert await hasher.verify(stored, "before the nul") is False
    assert await hasher.verify(stored, "before the nulafter the nul") is False
    plain = await hasher.hash("before the nul")
    assert await hasher.verify(plain, "before the nul\x00") is False


async def test_nfc_and_nfd_forms_are_the_same_password(hasher: PasswordHasherService) -> None:
    """C-117: passwords are NFKC-normalised before hashing and before checking."""
    nfc = unicodedata.normalize("NFC", "Crème brûlée à l'été")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert normalize(nfc) == normalize(nfd)
    for stored in (await hasher.hash(nfc), await hasher.hash(nfd)):
        assert await hasher.verify(stored, nfc) is True
        assert await hasher.verify(stored, nfd) is True


async def test_compatibility_forms_fold_together(hasher: PasswordHasherService) -> None:
    """C-117: NFKC (not only NFC) — full-width letters are their ASCII counterparts."""
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c != " " else c for c in "password one")  # U+FF50...
    assert fullwidth != "password one"
    stored = await hasher.hash("password one")
    assert await hasher.verify(stored, fullwidth) is True
    assert await hasher.verify(stored, "PASSWORD ONE") is False  # case is not folded


def test_rehash_when_the_parameters_change() -> None:
    weak = PasswordHasherService(FAST_HASH)
    strong = PasswordHasherService(HashParameters(memory_kib=2048, time_cost=2, parallelism=1))
    weak_hash = weak.hash_sync(GOOD)
    strong_hash = strong.hash_sync(GOOD)
    assert strong.needs_rehash(weak_hash) is True
    assert strong.needs_rehash(strong_hash) is False
    assert weak.needs_rehash(weak_hash) is False
    assert weak.needs_rehash(strong_hash) is True  # any difference, downwards too
    assert strong.needs_rehash("not a hash") is True


async def test_old_hashes_keep_verifying_after_a_parameter_change() -> None:
    weak_hash = PasswordHasherService(FAST_HASH).hash_sync(GOOD)
    strong = PasswordHasherService(HashParameters(memory_kib=2048, time_cost=2, parallelism=1))
    assert await strong.verify(weak_hash, GOOD) is True
    assert await strong.verify(weak_hash, "wrong") is False
