import pytest

from identity.secrets import SecretBox, SecretDecryptionError


def test_round_trip_and_ciphertext_hides_the_value() -> None:
    box = SecretBox("k" * 40)
    token = box.encrypt("client-secret-canary")
    assert "client-secret-canary" not in token
    assert box.decrypt(token) == "client-secret-canary"
    assert box.encrypt("x") != box.encrypt("x")  # random IV


def test_previous_keys_decrypt_after_rotation() -> None:
    old = SecretBox("old-key" * 6)
    token = old.encrypt("seed")
    assert SecretBox("new-key" * 6, ["old-key" * 6]).decrypt(token) == "seed"
    with pytest.raises(SecretDecryptionError):
        SecretBox("new-key" * 6).decrypt(token)


def test_purposes_do_not_share_keys() -> None:
    token = SecretBox("k" * 40, purpose="oidc").encrypt("v")
    with pytest.raises(SecretDecryptionError):
        SecretBox("k" * 40, purpose="totp").decrypt(token)


@pytest.mark.parametrize("garbage", ["", "not-a-token", "gAAAAA" + "A" * 80])
def test_garbage_is_an_error(garbage: str) -> None:
    with pytest.raises(SecretDecryptionError):
        SecretBox("k" * 40).decrypt(garbage)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        SecretBox("")
