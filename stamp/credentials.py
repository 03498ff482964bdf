"""Who may call the API: static bearer tokens and JWT verification keys (issue 7).

Pure: reading the configured credentials and checking a presented token; the HTTP
edge (``stamp.api.auth``) decides which routes need one and how to answer.

Static tokens are kept only as SHA-256 digests and compared in constant time, so
neither memory dumps nor ``check-config`` nor a timing probe reveals a token. JWTs
are verified with public keys only (a JWKS file or a PEM), with an explicit
algorithm list that can never contain ``none`` or an HMAC algorithm: an HS256 token
"signed" with the public key as its secret is the classic way around a verifier
that lets the token pick the algorithm.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

TOKEN_DIGEST_PREFIX: Final = "sha256:"  # noqa: S105 - a label, not a secret
MIN_PLAIN_TOKEN_LENGTH: Final = 16
MAX_TOKEN_LENGTH: Final = 8192
"""aiohttp refuses longer header lines anyway; a bound keeps hashing and parsing cheap."""
MIN_RSA_BITS: Final = 2048
DEFAULT_LEEWAY_SECONDS: Final = 30.0
MAX_LEEWAY_SECONDS: Final = 300.0

# RFC 6750 §2.1 b64token: what a client can put after "Bearer ".
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")

RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
EDDSA_ALGORITHMS: Final = ("EdDSA",)
SUPPORTED_ALGORITHMS: Final = (*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), *EDDSA_ALGORITHMS)
DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = ("RS256", "ES256", "EdDSA")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class CredentialsError(ValueError):
    """A credential in the configuration cannot be used. Messages never quote a token."""


class InvalidCredentials(Exception):
    """A presented token is not accepted. ``reason`` is for the log, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- static tokens ---------------------------------------------------------------------


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_token_spec(spec: str) -> bytes:
    """A configured token: ``sha256:<64 hex>`` of the token, or the token itself
    (hashed here and then forgotten). Returns the 32-byte digest."""
    spec = spec.strip()
    if spec.lower().startswith(TOKEN_DIGEST_PREFIX):
        hex_digest = spec[len(TOKEN_DIGEST_PREFIX) :]
        if not _HEX_DIGEST.fullmatch(hex_digest):
            raise CredentialsError("a sha256: token digest must be 64 hexadecimal digits")
        return bytes.fromhex(hex_digest)
    if len(spec) < MIN_PLAIN_TOKEN_LENGTH:
        raise CredentialsError(
            f"a token must be at least {MIN_PLAIN_TOKEN_LENGTH} characters long "
            "(`stamp tokens generate` makes one)"
        )
    if len(spec) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(spec):
        raise CredentialsError(
            "a token may hold only letters, digits and -._~+/ (with trailing =), "
            f"at most {MAX_TOKEN_LENGTH} characters"
        )
    return token_digest(spec)


def check_token_syntax(token: str) -> None:
    """InvalidCredentials unless the token is an RFC 6750 b64token of sane length: what
    a client can lawfully send after "Bearer ". Anything else (bytes aiohttp decoded as
    surrogates, spaces, control characters) is refused before it is hashed or parsed."""
    if not token:
        raise InvalidCredentials("empty token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidCredentials("token too long")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidCredentials("malformed token")


def match_token(digests: Sequence[bytes], token: str) -> int | None:
    """The index of the configured digest the token hashes to, or None. Every digest
    is compared, in constant time, so the answer time does not depend on which one
    matched or how much of one did."""
    presented = token_digest(token)
    found: int | None = None
    for index, digest in enumerate(digests):
        if hmac.compare_digest(presented, digest) and found is None:
            found = index
    return found


# --- JWT keys ----------------------------------------------------------------------------


def parse_algorithms(raw: str) -> tuple[str, ...]:
    """``STAMP_AUTH_JWT_ALGORITHMS``: a comma-separated list of JWA names."""
    by_folded = {a.lower(): a for a in SUPPORTED_ALGORITHMS}
    chosen: list[str] = []
    for item in raw.split(","):
        name = item.strip()
        if not name:
            continue
        if name.lower() == "none":
            raise CredentialsError("the 'none' algorithm (unsigned tokens) is never accepted")
        if name.upper().startswith("HS"):
            raise CredentialsError(
                f"{name}: HMAC algorithms are not accepted; Stamp verifies tokens with public keys only"
            )
        canonical = by_folded.get(name.lower())
        if canonical is None:
            raise CredentialsError(f"{name}: unsupported; use some of {', '.join(SUPPORTED_ALGORITHMS)}")
        if canonical not in chosen:
            chosen.append(canonical)
    if not chosen:
        raise CredentialsError("name at least one algorithm")
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One public key tokens may be signed with, and the algorithms allowed with it."""

    key: PublicKey = field(repr=False, compare=False)
    algorithms: tuple[str, ...]
    kid: str | None
    kind: str
    """``RSA-2048``, ``EC-P-256``, ``Ed25519``: for display."""
    fingerprint: str
    """Hex of the first 8 bytes of SHA-256 of the SubjectPublicKeyInfo DER."""
    source: str

    def describe(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "kind": self.kind,
            "algorithms": list(self.algorithms),
            "fingerprint": self.fingerprint,
            "source": self.source,
        }


def _key_algorithms(key: PublicKey) -> tuple[str, tuple[str, ...]]:
    """The key's kind and every algorithm it can verify; refuses weak or odd keys."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CredentialsError(
                f"an RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})"
            )
        return f"RSA-{key.key_size}", RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise CredentialsError(f"unsupported elliptic curve {key.curve.name}")
        return f"EC-{key.curve.name}", (algorithm,)
    return "Ed25519", EDDSA_ALGORITHMS


def _make_key(key: object, allowed: Sequence[str], kid: str | None, source: str) -> JwtKey:
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise CredentialsError("only RSA, EC (P-256/384/521) and Ed25519 public keys are supported")
    kind, possible = _key_algorithms(key)
    algorithms = tuple(a for a in allowed if a in possible)
    if not algorithms:
        raise CredentialsError(
            f"the {kind} key{f' {kid!r}' if kid else ''} verifies none of the allowed algorithms "
            f"({', '.join(allowed)}); it needs one of {', '.join(possible)}"
        )
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = hashlib.sha256(der).hexdigest()[:16]
    return JwtKey(key, algorithms, kid, kind, fingerprint, source)


def load_public_key_pem(data: bytes, allowed: Sequence[str], source: str = "PEM") -> JwtKey:
    """A PEM public key (``BEGIN PUBLIC KEY``) or an X.509 certificate holding one."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in data:
            raise CredentialsError("holds a private key; configure the public key only") from None
        raise CredentialsError("not a PEM public key or certificate") from None
    return _make_key(key, allowed, None, source)


# JWK members that only a private or symmetric key has (RFC 7518 §6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def load_jwks(data: bytes, allowed: Sequence[str], source: str = "JWKS") -> tuple[JwtKey, ...]:
    """The signing keys of a JWK Set (RFC 7517 §5), as an identity provider publishes
    them. Encryption keys, and keys whose ``alg`` is not allowed, are left out; a set
    with no usable key, or with any private or symmetric key, is refused."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise CredentialsError("not a JSON document") from None
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise CredentialsError('not a JWK Set: expected {"keys": [...]}')
    keys: list[JwtKey] = []
    for index, member in enumerate(members):
        if not isinstance(member, dict):
            raise CredentialsError(f"keys[{index}] is not a JSON object")
        kid = member.get("kid")
        label = f"keys[{index}]" + (f" ({kid!r})" if isinstance(kid, str) else "")
        if _PRIVATE_MEMBERS.intersection(member):
            raise CredentialsError(
                f"{label} holds private or symmetric key material; publish public keys only"
            )
        if member.get("use", "sig") != "sig":
            continue
        alg = member.get("alg")
        usable = [a for a in allowed if alg is None or a == alg]
        if not usable:
            continue
        key = _jwk_public_key(member, label)
        keys.append(_make_key(key, usable, kid if isinstance(kid, str) else None, source))
    if not keys:
        raise CredentialsError(f"holds no signing key for the allowed algorithms ({', '.join(allowed)})")
    return tuple(keys)


def _jwk_public_key(member: Mapping[str, Any], label: str) -> object:
    kty = member.get("kty")
    loaders = {"RSA": RSAAlgorithm.from_jwk, "EC": ECAlgorithm.from_jwk, "OKP": OKPAlgorithm.from_jwk}
    loader = loaders.get(kty) if isinstance(kty, str) else None
    if loader is None:
        raise CredentialsError(f"{label}: unsupported key type {kty!r} (RSA, EC or OKP)")
    try:
        return loader(dict(member))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise CredentialsError(f"{label}: not a valid {kty} public key") from None


# --- JWT policy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    """What a JWT must satisfy: signed by one of ``keys`` with an algorithm allowed for
    that key, issued by ``issuer`` for one of ``audience``, within its validity (with
    ``leeway_seconds`` for clock skew). ``exp`` is required: a token that never
    expires cannot be revoked by waiting."""

    issuer: str
    audience: tuple[str, ...]
    keys: tuple[JwtKey, ...]
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience or not self.keys:
            raise CredentialsError("a JWT policy needs an issuer, an audience and at least one key")

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(a for k in self.keys for a in k.algorithms)

    def describe(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audience": list(self.audience),
            "leeway_seconds": self.leeway_seconds,
            "keys": [k.describe() for k in self.keys],
        }


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def verify_jwt(policy: JwtPolicy, token: str) -> dict[str, Any]:
    """The token's claims if it satisfies the policy; else InvalidCredentials."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidCredentials("token too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidCredentials("malformed token") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise InvalidCredentials(f"algorithm {str(alg)[:20]!r} not allowed")
    candidates = _candidates(policy.keys, alg, kid if isinstance(kid, str) else None)
    if not candidates:
        raise InvalidCredentials("no configured key for the token's kid and algorithm")
    for key in candidates:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                # The key's own list, fixed at configuration: never taken from the token.
                algorithms=list(key.algorithms),
                issuer=policy.issuer,
                audience=list(policy.audience),
                leeway=policy.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            continue  # maybe another of the candidate keys signed it
        except jwt.PyJWTError as exc:
            # The signature checked out (PyJWT verifies it before the claims): the
            # claims are what is wrong, and no other key would change that.
            raise InvalidCredentials(type(exc).__name__) from None
        _check_time_claims(claims)
        return claims
    raise InvalidCredentials("signature does not verify")


TIME_CLAIMS: Final = ("exp", "nbf", "iat")


def _check_time_claims(claims: Mapping[str, Any]) -> None:
    """RFC 7519 §2 NumericDate: a JSON number. PyJWT also takes ``"1700000000"`` (it
    calls int() on it), and a value one verifier reads as a number and another as
    garbage is how two services come to disagree on a token's validity."""
    for name in TIME_CLAIMS:
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidCredentials(f"claim {name} is not a number")


def _candidates(keys: Iterable[JwtKey], alg: str, kid: str | None) -> list[JwtKey]:
    """The keys that may have signed a token with this ``alg`` and ``kid``. A ``kid``
    some configured key carries selects exactly the keys with that id, whatever the
    algorithm: a token naming one key is never verified by another. Only a ``kid`` no
    key carries falls back to the keys configured without one."""
    keys = list(keys)
    if kid is not None:
        named = [k for k in keys if k.kid == kid]
        if named:
            return [k for k in named if alg in k.algorithms]
        return [k for k in keys if k.kid is None and alg in k.algorithms]
    return [k for k in keys if alg in k.algorithms]
