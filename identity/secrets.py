"""Encryption at rest for the few secrets the gateway must read back (an OIDC client secret, a TOTP seed).

Fernet (AES-128-CBC + HMAC-SHA256) under keys derived with HKDF from `PORTCULLIS_DATA_ENCRYPTION_KEY`;
previous keys (`PORTCULLIS_PREVIOUS_DATA_ENCRYPTION_KEYS`) still decrypt, so the key can be rotated
without rewriting every row at once. A value that fails to decrypt is an error, never a silent empty
secret. Hashes, not encryption, protect what never has to be read back (passwords, API keys, codes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretDecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


def _derive(material: str, purpose: bytes) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"portcullis:" + purpose).derive(material.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class SecretBox:
    def __init__(self, current: str, previous: Iterable[str] = (), *, purpose: str = "data") -> None:
        if not current:
            raise ValueError("an encryption key is required")
        self._fernet = MultiFernet(
            [_derive(current, purpose.encode()), *(_derive(p, purpose.encode()) for p in previous if p)]
        )

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except (InvalidToken, ValueError) as exc:
            raise SecretDecryptionError("stored secret cannot be decrypted with the configured keys") from exc
