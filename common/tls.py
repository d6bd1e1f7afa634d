"""Mutual TLS between the services: IMAGESVC_TLS_* read once, credentials built here only.

Every gRPC server then serves TLS and takes only clients whose certificate the CA signed;
every client presents its own certificate and checks the server's against the same CA
and the name it dialled (see docs/operators.md, "TLS between the services").
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.env import ConfigError, Env


@dataclass(frozen=True)
class Tls:
    """This process's certificate chain and key, and the CA its peers' certificates come
    from, as PEM bytes read at start (a file replaced later takes a restart)."""

    cert: bytes
    key: bytes
    ca: bytes
    # Checked in servers' certificates instead of the host dialled, when set.
    server_name: str | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> Tls | None:
        """None when no IMAGESVC_TLS_* file is set; ConfigError, naming the variable,
        when only some are, or one cannot be read or used."""
        env = env or Env()
        paths = {
            "TLS_CERT": env.raw("TLS_CERT"),
            "TLS_KEY": env.raw("TLS_KEY"),
            "TLS_CA": env.raw("TLS_CA"),
        }
        missing = [f"IMAGESVC_{name}" for name, path in paths.items() if path is None]
        server_name = env.raw("TLS_SERVER_NAME")
        if len(missing) == len(paths):
            if server_name is not None:
                raise ConfigError("IMAGESVC_TLS_SERVER_NAME is set without IMAGESVC_TLS_CERT")
            return None
        if missing:
            raise ConfigError(
                f"TLS takes IMAGESVC_TLS_CERT, IMAGESVC_TLS_KEY and IMAGESVC_TLS_CA together: "
                f"{', '.join(missing)} missing"
            )
        data = {name: _read(name, Path(path)) for name, path in paths.items() if path}
        _check(paths)
        return cls(data["TLS_CERT"], data["TLS_KEY"], data["TLS_CA"], server_name)

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS with our certificate; a client without one the CA signed is refused."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS presenting our certificate, trusting only servers the CA signed."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read(name: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"IMAGESVC_{name}={path} cannot be read: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"IMAGESVC_{name}={path} is not a PEM file")
    return data


def _check(paths: dict[str, str | None]) -> None:
    """Refuse at start what gRPC would only refuse at the first handshake, in words that
    say nothing of which file was wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=paths["TLS_CA"])
    except ssl.SSLError:
        raise ConfigError(f"IMAGESVC_TLS_CA={paths['TLS_CA']} holds no CA certificate") from None
    try:
        # With a password given, an encrypted key fails here instead of prompting on the
        # terminal (gRPC takes no encrypted keys).
        context.load_cert_chain(paths["TLS_CERT"] or "", paths["TLS_KEY"], password=b"\0")
    except ssl.SSLError:
        raise ConfigError(
            f"IMAGESVC_TLS_KEY={paths['TLS_KEY']} is not the unencrypted private key of the "
            f"certificate in IMAGESVC_TLS_CERT={paths['TLS_CERT']}"
        ) from None
