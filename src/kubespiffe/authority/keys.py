"""Key types kubespiffe signs with, the public keys it certifies, and PKCS#8 PEM (de)serialization."""

from __future__ import annotations

import enum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Every SPIFFE client library verifies these; 8192 bits caps the cost of verifying a caller's RSA key.
SUPPORTED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192


class KeyType(enum.Enum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"


def generate_key(key_type: KeyType = KeyType.EC_P256) -> SigningKey:
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    size = 2048 if key_type is KeyType.RSA_2048 else 3072
    return rsa.generate_private_key(public_exponent=65537, key_size=size)


def check_public_key(key: PublicKeyTypes) -> None:
    """One rule for keys we certify and keys we load: EC P-256/P-384, or RSA of 2048 to 8192 bits."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in SUPPORTED_CURVES:
            raise ValueError(f"EC curve {key.curve.name} is not supported (use P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits (got {key.key_size})")
        if key.key_size > MAX_RSA_BITS:
            raise ValueError(f"RSA keys must have at most {MAX_RSA_BITS} bits (got {key.key_size})")
    else:
        raise ValueError(f"key type {type(key).__name__} is not supported (use EC P-256/P-384 or RSA)")


def key_to_pem(key: SigningKey) -> str:
    """Unencrypted PKCS#8: the Secret is the protection (RBAC, encryption at rest), as for any TLS Secret."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def key_from_pem(pem: str) -> SigningKey:
    """Load a key written by `key_to_pem`; anything else is a ValueError that never quotes the input."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not an unencrypted PKCS#8 PEM private key of a supported type") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"key type {type(key).__name__} is not supported (use EC P-256/P-384 or RSA)")
    check_public_key(key.public_key())
    return key
