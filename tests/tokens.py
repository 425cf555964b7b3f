"""Signed tokens and keys for the auth tests."""

from __future__ import annotations

import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(secret: str = SECRET, algorithm: str = "HS256", ttl: float = 300.0, **claims: Any) -> str:
    """A token signed with ``secret`` (or a private key) expiring ``ttl`` seconds from now; claims may override."""
    payload: dict[str, Any] = {"sub": "u-ann", "name": "ann", "exp": int(time.time() + ttl)}
    payload.update(claims)
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def rsa_keys() -> tuple[Any, str]:
    """An RSA private key and its public key as PEM text."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private, public_pem(private)


def ec_keys() -> tuple[Any, str]:
    """A P-256 private key and its public key as PEM text."""
    private = ec.generate_private_key(ec.SECP256R1())
    return private, public_pem(private)


def public_pem(private: Any) -> str:
    pem: bytes = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()
