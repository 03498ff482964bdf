"""Stamp's configuration: ``STAMP_*`` environment variables, validated at start.

Every problem is collected and reported at once (``ConfigError``) so an operator fixes
a deployment in one go; ``stamp check-config`` prints the result with secrets masked.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from stamp import event_loop
from stamp.credentials import (
    DEFAULT_ALGORITHMS,
    DEFAULT_LEEWAY_SECONDS,
    MAX_LEEWAY_SECONDS,
    CredentialsError,
    JwtKey,
    JwtPolicy,
    load_jwks,
    load_public_key_pem,
    parse_algorithms,
    parse_token_spec,
)
from stamp.crypto import backend as crypto_backend
from stamp.crypto.issuer_keys import IssuerKey
from stamp.db.dsn import mask_dsn
from stamp.gateways.endpoint_allow import EndpointAllowList

T = TypeVar("T")

ROUTE_PREFIXES = ("/v1", "/health", "/metrics", "/openapi.json", "/docs")
"""The first path segment of every route Stamp serves (a test holds the routes to it).
A path base may not be one of them: ``STAMP_PATH_BASE=/v1`` would make ``/v1/v1/…``
and ``/v1/…`` two spellings of different routes, and protection must never depend on
which one a reader had in mind."""

LEGACY_ISSUER_KEY_PREFIX = "IssuerPrivateKeyPems__"
"""The existing Stamp's form: one variable per grid area holding Base64 of the PEM."""


class ConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": the delay before retry n is drawn
    uniformly from [c/2, c], c = min(cap, base·2^(n-1)) (actors/backoff.py)."""

    base_seconds: float = 0.2
    cap_seconds: float = 10.0
    max_attempts: int = 10


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("stamp")))
    host: str = "127.0.0.1"
    port: int = 8080
    path_base: str = ""
    registries: Mapping[str, str] = field(default_factory=dict)
    issuer_keys: Mapping[str, IssuerKey] = field(default_factory=dict, repr=False)
    auto_migrate: bool = True
    # Stable across restarts of one deployment, so a restarted instance resumes its own
    # certificates at once instead of waiting for their leases to expire.
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}:8080")
    max_in_flight: int = 512
    max_backlog: int = 200_000
    max_body_bytes: int = 64 * 1024
    # POST /v1/certificates/batch: items per request, and its own body limit (a
    # thousand certificates with attributes are about a megabyte).
    max_batch: int = 1000
    max_batch_body_bytes: int = 8 * 1024 * 1024
    max_attributes: int = 50
    max_attribute_length: int = 512
    crypto_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    verify_own_proofs: bool = True
    # auto: the native libdecaf backend when its extension loads, else libsodium.
    crypto_backend: str = "auto"
    # auto: uvloop when it is installed (stamp/event_loop.py), else asyncio's own loop.
    event_loop: str = "auto"
    # A failed bundle build (a crypto worker died, or the build raised).
    crypto_retry: RetryPolicy = RetryPolicy()
    registry_batch_size: int = 200
    registry_poll_initial_seconds: float = 0.2
    registry_poll_max_seconds: float = 2.0
    registry_pending_timeout_seconds: float = 300.0
    registry_call_timeout_seconds: float = 10.0
    registry_retry: RetryPolicy = RetryPolicy()
    # TLS of the https:// registries: the CA bundle to trust (None: the system's roots)
    # and an optional client certificate.
    registry_tls_ca_file: Path | None = None
    registry_tls_cert_file: Path | None = None
    registry_tls_key_file: Path | None = None
    wallet_timeout_seconds: float = 10.0
    wallet_concurrency_per_host: int = 32
    wallet_retry: RetryPolicy = RetryPolicy()
    # The hosts wallet endpoints may name (docs/configuration.md); None: any host.
    wallet_endpoint_allow: EndpointAllowList | None = None
    # Backoff of database statements that failed (retried for ever: max_attempts unused)
    # and of restarts of a crashed certificate actor (max_attempts unused: the
    # supervisor fails a certificate after its third crash). Not configurable.
    database_retry: RetryPolicy = RetryPolicy(base_seconds=0.2, cap_seconds=5.0)
    restart_retry: RetryPolicy = RetryPolicy(base_seconds=0.2, cap_seconds=10.0)
    lease_seconds: float = 60.0
    shutdown_timeout_seconds: float = 20.0
    log_format: str = "json"
    log_level: str = "info"
    # Slow and idle HTTP clients (stamp/api/connections.py, docs/security.md).
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0
    # Longer than a load balancer's idle timeout (AWS ALB 60 s), so that the balancer,
    # not Stamp, closes an idle pooled connection and never sends on a closing one.
    http_keepalive_timeout_seconds: float = 75.0
    http_max_connections: int = 1024
    # Bearer authentication of /v1 (docs/authentication.md); off when both are empty.
    # SHA-256 digests of the static tokens: the tokens themselves are never kept.
    auth_tokens: tuple[bytes, ...] = field(default=(), repr=False)
    auth_jwt: JwtPolicy | None = None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens) or self.auth_jwt is not None

    def masked(self) -> dict[str, Any]:
        """The effective configuration for display: secrets and passwords masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "issuer_keys":
                value = {area: key.fingerprint for area, key in value.items()}
            elif f.name == "auth_tokens":
                value = f"{len(value)} configured (masked)" if value else None
            elif f.name == "auth_jwt":
                value = value.describe() if value is not None else None
            elif f.name == "database_url" and value:
                value = mask_dsn(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, EndpointAllowList):
                value = value.describe()
            elif isinstance(value, RetryPolicy):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def _read(env: Mapping[str, str], problems: list[str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, OSError) as exc:
        problems.append(f"{name}={raw!r}: {exc}")
        return default


def _crypto_backend(raw: str) -> str:
    """A choice that can run here: forcing ``decaf`` where the extension cannot load is a
    configuration error, reported at start (and by check-config) with the reason."""
    try:
        selection = crypto_backend.select(raw)
    except crypto_backend.BackendUnavailable as exc:
        raise ValueError(f"decaf cannot be used here: {exc}") from exc
    return selection.requested


def _event_loop(raw: str) -> str:
    """A loop that can run here: ``uvloop`` where it is not installed is a configuration error."""
    choice = raw.strip().lower()
    try:
        event_loop.resolve(choice)
    except event_loop.EventLoopUnavailable as exc:
        raise ValueError(str(exc)) from exc
    return choice


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be ≥ 0")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:  # also refuses nan
        raise ValueError("must be a positive number")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0..65535")
    return value


def _path_base(raw: str) -> str:
    base = "/" + raw.strip("/")
    if base == "/":
        return ""
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", base):
        raise ValueError("must be a URL path such as /api")
    check_path_base(base)
    return base


def check_path_base(base: str) -> None:
    """ValueError if the path base begins with the first segment of a route of Stamp's."""
    if not base:
        return
    first = "/" + base.split("/")[1].lower()
    if first in ROUTE_PREFIXES:
        raise ValueError(
            f"collides with Stamp's own routes under {first}; choose another prefix, such as /api "
            f"(reserved: {', '.join(ROUTE_PREFIXES)})"
        )


def _pairs(raw: str) -> list[tuple[str, str]]:
    """``NAME=value`` items separated by ``,`` or ``;`` (PEM and Base64 contain neither)."""
    pairs = []
    for item in re.split(r"[;,]", raw):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"expected NAME=VALUE items, got {item.strip()!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _registries(raw: str) -> dict[str, str]:
    """``NAME=host:port`` (plaintext gRPC) or ``NAME=https://host:port`` (TLS)."""
    registries = {}
    for name, address in _pairs(raw):
        if not re.fullmatch(r"(?i:https?://)?[^:/\s]+:\d{1,5}", address):
            raise ValueError(
                f"registry {name!r}: address must be host:port or https://host:port, got {address!r}"
            )
        registries[name] = address
    return registries


def _pem_certificates(raw: str) -> Path:
    path = Path(raw)
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError("holds no PEM certificate")
    return path


def _pem_private_key(raw: str) -> Path:
    path = Path(raw)
    try:
        load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, TypeError):
        # Never the exception's text: it could quote the key file.
        raise ValueError("holds no unencrypted PEM private key") from None
    return path


def _registry_tls(
    env: Mapping[str, str], problems: list[str], registries: Mapping[str, str]
) -> tuple[Path | None, Path | None, Path | None]:
    ca = _read(env, problems, "STAMP_REGISTRY_TLS_CA_FILE", _pem_certificates, None)
    cert = _read(env, problems, "STAMP_REGISTRY_TLS_CERT_FILE", _pem_certificates, None)
    key = _read(env, problems, "STAMP_REGISTRY_TLS_KEY_FILE", _pem_private_key, None)
    named = [
        n for n in ("CA_FILE", "CERT_FILE", "KEY_FILE") if env.get(f"STAMP_REGISTRY_TLS_{n}", "").strip()
    ]
    if ("CERT_FILE" in named) != ("KEY_FILE" in named):
        problems.append(
            "STAMP_REGISTRY_TLS_CERT_FILE and STAMP_REGISTRY_TLS_KEY_FILE: a client certificate needs both"
        )
    if named and not any(a.lower().startswith("https://") for a in registries.values()):
        # Otherwise an operator could believe the registry traffic is protected.
        problems.append(
            f"STAMP_REGISTRY_TLS_{named[0]}: no registry in STAMP_REGISTRIES uses TLS "
            "(write its address as https://host:port)"
        )
    return ca, cert, key


def _issuer_key(value: str) -> IssuerKey:
    """A PEM file path, inline PEM, or Base64 of the PEM text."""
    if "BEGIN" not in value and not value.startswith("LS0t") and Path(value).exists():
        value = Path(value).read_text()
    return IssuerKey.from_pem(value)


def _issuer_keys(env: Mapping[str, str], problems: list[str]) -> dict[str, IssuerKey]:
    keys: dict[str, IssuerKey] = {}
    raw = env.get("STAMP_ISSUER_KEYS", "")
    items: list[tuple[str, str, str]] = []
    # Inline PEM keeps its newlines; split items on ';' or ',' only outside a PEM body.
    try:
        items += [("STAMP_ISSUER_KEYS", area, value) for area, value in _pairs(raw.replace("\n", "\\n"))]
    except ValueError as exc:
        problems.append(f"STAMP_ISSUER_KEYS: {exc}")
    items += [
        (name, name[len(LEGACY_ISSUER_KEY_PREFIX) :], value)
        for name, value in env.items()
        if name.startswith(LEGACY_ISSUER_KEY_PREFIX)
    ]
    for source, area, value in items:
        try:
            keys[area] = _issuer_key(value.replace("\\n", "\n"))
        except (ValueError, OSError) as exc:
            problems.append(f"{source}: grid area {area!r}: not a usable Ed25519 private key ({exc})")
    return keys


def _retry(env: Mapping[str, str], problems: list[str], prefix: str) -> RetryPolicy:
    default = RetryPolicy()
    return RetryPolicy(
        base_seconds=_read(
            env, problems, f"{prefix}_RETRY_BASE_SECONDS", _non_negative_float, default.base_seconds
        ),
        cap_seconds=_read(
            env, problems, f"{prefix}_RETRY_CAP_SECONDS", _non_negative_float, default.cap_seconds
        ),
        max_attempts=_read(
            env, problems, f"{prefix}_RETRY_MAX_ATTEMPTS", _positive_int, default.max_attempts
        ),
    )


def _auth_tokens(env: Mapping[str, str], problems: list[str]) -> tuple[bytes, ...]:
    """``STAMP_AUTH_TOKENS`` (comma-separated) and ``STAMP_AUTH_TOKENS_FILE`` (one per
    line, ``#`` comments): each a ``sha256:<hex>`` digest or a plain token. Problems
    name the item by its place, never by its text."""
    specs = [
        (f"STAMP_AUTH_TOKENS item {n}", item)
        for n, item in enumerate(env.get("STAMP_AUTH_TOKENS", "").split(","), 1)
        if item.strip()
    ]
    path = env.get("STAMP_AUTH_TOKENS_FILE", "").strip()
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"STAMP_AUTH_TOKENS_FILE={path!r}: cannot read it ({type(exc).__name__})")
            lines = []
        specs += [
            (f"STAMP_AUTH_TOKENS_FILE line {n}", line)
            for n, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    digests: list[bytes] = []
    for where, spec in specs:
        try:
            digest = parse_token_spec(spec)
        except CredentialsError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if digest not in digests:
            digests.append(digest)
    return tuple(digests)


def _leeway(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= MAX_LEEWAY_SECONDS:
        raise ValueError(f"must be between 0 and {MAX_LEEWAY_SECONDS:g} seconds")
    return value


def _pem_keys(data: bytes, allowed: tuple[str, ...], source: str) -> tuple[JwtKey, ...]:
    return (load_public_key_pem(data, allowed, source),)


def _auth_jwt(env: Mapping[str, str], problems: list[str]) -> JwtPolicy | None:
    issuer = env.get("STAMP_AUTH_JWT_ISSUER", "").strip()
    audience = tuple(a.strip() for a in env.get("STAMP_AUTH_JWT_AUDIENCE", "").split(",") if a.strip())
    loaders: dict[str, Callable[[bytes, tuple[str, ...], str], tuple[JwtKey, ...]]] = {
        "STAMP_AUTH_JWT_JWKS_FILE": load_jwks,
        "STAMP_AUTH_JWT_PUBLIC_KEY": _pem_keys,
    }
    sources = [(name, env[name].strip(), load) for name, load in loaders.items() if env.get(name, "").strip()]
    before = len(problems)
    algorithms = _read(env, problems, "STAMP_AUTH_JWT_ALGORITHMS", parse_algorithms, DEFAULT_ALGORITHMS)
    leeway = _read(env, problems, "STAMP_AUTH_JWT_LEEWAY_SECONDS", _leeway, DEFAULT_LEEWAY_SECONDS)
    if not sources:
        if issuer or audience or env.get("STAMP_AUTH_JWT_ALGORITHMS"):
            problems.append(
                "STAMP_AUTH_JWT_*: JWT authentication needs its keys: set STAMP_AUTH_JWT_JWKS_FILE "
                "or STAMP_AUTH_JWT_PUBLIC_KEY"
            )
        return None
    keys: list[JwtKey] = []
    for name, path, loader in sources:
        try:
            keys += loader(Path(path).read_bytes(), algorithms, path)
        except OSError as exc:
            problems.append(f"{name}={path!r}: cannot read it ({exc.strerror or type(exc).__name__})")
        except CredentialsError as exc:
            problems.append(f"{name}={path!r}: {exc}")
    if not issuer:
        problems.append(
            "STAMP_AUTH_JWT_ISSUER: required with JWT authentication (the `iss` tokens must carry)"
        )
    if not audience:
        problems.append(
            "STAMP_AUTH_JWT_AUDIENCE: required with JWT authentication (the `aud` tokens must carry, "
            "so tokens meant for other services are refused)"
        )
    if len(problems) > before:
        return None
    return JwtPolicy(issuer, audience, tuple(keys), leeway)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    d = Settings()
    database_url = env.get("STAMP_DATABASE_URL") or None
    if database_url and not re.match(r"postgres(ql)?://", database_url):
        problems.append("STAMP_DATABASE_URL: must be a postgresql:// URL")
    log_format = env.get("STAMP_LOG_FORMAT", d.log_format).lower()
    if log_format not in {"json", "console"}:
        problems.append(f"STAMP_LOG_FORMAT={log_format!r}: must be json or console")
    log_level = env.get("STAMP_LOG_LEVEL", d.log_level).lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        problems.append(f"STAMP_LOG_LEVEL={log_level!r}: must be debug, info, warning or error")
    registries: dict[str, str] = _read(env, problems, "STAMP_REGISTRIES", _registries, {})
    tls_ca, tls_cert, tls_key = _registry_tls(env, problems, registries)
    settings = Settings(
        database_url=database_url,
        data_dir=_read(env, problems, "STAMP_DATA_DIR", Path, d.data_dir),
        host=env.get("STAMP_HOST", d.host),
        port=_read(env, problems, "STAMP_PORT", _port, d.port),
        path_base=_read(env, problems, "STAMP_PATH_BASE", _path_base, d.path_base),
        registries=registries,
        issuer_keys=_issuer_keys(env, problems),
        auto_migrate=_read(env, problems, "STAMP_AUTO_MIGRATE", _bool, database_url is None),
        instance_id=env.get("STAMP_INSTANCE_ID")
        or f"{socket.gethostname()}:{env.get('STAMP_PORT') or d.port}",
        max_in_flight=_read(env, problems, "STAMP_MAX_IN_FLIGHT", _positive_int, d.max_in_flight),
        max_backlog=_read(env, problems, "STAMP_MAX_BACKLOG", _positive_int, d.max_backlog),
        max_body_bytes=_read(env, problems, "STAMP_MAX_BODY_BYTES", _positive_int, d.max_body_bytes),
        max_batch=_read(env, problems, "STAMP_MAX_BATCH", _positive_int, d.max_batch),
        max_batch_body_bytes=_read(
            env, problems, "STAMP_MAX_BATCH_BODY_BYTES", _positive_int, d.max_batch_body_bytes
        ),
        max_attributes=_read(env, problems, "STAMP_MAX_ATTRIBUTES", _positive_int, d.max_attributes),
        max_attribute_length=_read(
            env, problems, "STAMP_MAX_ATTRIBUTE_LENGTH", _positive_int, d.max_attribute_length
        ),
        crypto_workers=_read(env, problems, "STAMP_CRYPTO_WORKERS", _positive_int, d.crypto_workers),
        verify_own_proofs=_read(env, problems, "STAMP_VERIFY_OWN_PROOFS", _bool, d.verify_own_proofs),
        crypto_backend=_read(env, problems, "STAMP_CRYPTO_BACKEND", _crypto_backend, d.crypto_backend),
        event_loop=_read(env, problems, "STAMP_EVENT_LOOP", _event_loop, d.event_loop),
        crypto_retry=_retry(env, problems, "STAMP_CRYPTO"),
        registry_batch_size=_read(
            env, problems, "STAMP_REGISTRY_BATCH_SIZE", _positive_int, d.registry_batch_size
        ),
        registry_poll_initial_seconds=_read(
            env,
            problems,
            "STAMP_REGISTRY_POLL_INITIAL_SECONDS",
            _non_negative_float,
            d.registry_poll_initial_seconds,
        ),
        registry_poll_max_seconds=_read(
            env, problems, "STAMP_REGISTRY_POLL_MAX_SECONDS", _non_negative_float, d.registry_poll_max_seconds
        ),
        registry_pending_timeout_seconds=_read(
            env,
            problems,
            "STAMP_REGISTRY_PENDING_TIMEOUT_SECONDS",
            _non_negative_float,
            d.registry_pending_timeout_seconds,
        ),
        registry_call_timeout_seconds=_read(
            env,
            problems,
            "STAMP_REGISTRY_CALL_TIMEOUT_SECONDS",
            _non_negative_float,
            d.registry_call_timeout_seconds,
        ),
        registry_retry=_retry(env, problems, "STAMP_REGISTRY"),
        registry_tls_ca_file=tls_ca,
        registry_tls_cert_file=tls_cert,
        registry_tls_key_file=tls_key,
        wallet_timeout_seconds=_read(
            env, problems, "STAMP_WALLET_TIMEOUT_SECONDS", _non_negative_float, d.wallet_timeout_seconds
        ),
        wallet_concurrency_per_host=_read(
            env, problems, "STAMP_WALLET_CONCURRENCY_PER_HOST", _positive_int, d.wallet_concurrency_per_host
        ),
        wallet_retry=_retry(env, problems, "STAMP_WALLET"),
        wallet_endpoint_allow=_read(
            env, problems, "STAMP_WALLET_ENDPOINT_ALLOW", EndpointAllowList.parse, d.wallet_endpoint_allow
        ),
        lease_seconds=_read(env, problems, "STAMP_LEASE_SECONDS", _non_negative_float, d.lease_seconds),
        shutdown_timeout_seconds=_read(
            env, problems, "STAMP_SHUTDOWN_TIMEOUT", _non_negative_float, d.shutdown_timeout_seconds
        ),
        log_format=log_format,
        log_level=log_level,
        http_header_timeout_seconds=_read(
            env, problems, "STAMP_HTTP_HEADER_TIMEOUT_SECONDS", _positive_float, d.http_header_timeout_seconds
        ),
        http_body_timeout_seconds=_read(
            env, problems, "STAMP_HTTP_BODY_TIMEOUT_SECONDS", _positive_float, d.http_body_timeout_seconds
        ),
        http_keepalive_timeout_seconds=_read(
            env,
            problems,
            "STAMP_HTTP_KEEPALIVE_TIMEOUT_SECONDS",
            _positive_float,
            d.http_keepalive_timeout_seconds,
        ),
        http_max_connections=_read(
            env, problems, "STAMP_HTTP_MAX_CONNECTIONS", _positive_int, d.http_max_connections
        ),
        auth_tokens=_auth_tokens(env, problems),
        auth_jwt=_auth_jwt(env, problems),
    )
    if problems:
        raise ConfigError(problems)
    return settings
