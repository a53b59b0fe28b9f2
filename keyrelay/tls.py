"""TLS trust for upstream connections: one client context per distinct setting, built at start-up."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


class TlsConfigError(ValueError):
    """A TLS setting cannot be used; the message names the setting."""


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The TLS trust of one provider.

    Attributes:
        ca_file: A PEM bundle that replaces the system store for this provider (as curl's ``--cacert`` and
            Python's ``cafile``); None trusts the system store (OpenSSL's default paths, which honour
            ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``).
        verify: False skips certificate and host name checks altogether.
    """

    ca_file: str | None = None
    verify: bool = True


def client_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client TLS context for these settings (the system defaults: TLS 1.2+, host name checked).

    Raises:
        TlsConfigError: The CA file cannot be read or holds no PEM certificate.
    """
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except FileNotFoundError:
        raise TlsConfigError(f"tls_ca_file {tls.ca_file}: no such file") from None
    except PermissionError:
        raise TlsConfigError(f"tls_ca_file {tls.ca_file}: permission denied") from None
    except IsADirectoryError:
        raise TlsConfigError(f"tls_ca_file {tls.ca_file}: is a directory, not a PEM file") from None
    except OSError as exc:  # ssl.SSLError included: the file is not a PEM bundle
        reason = getattr(exc, "reason", None) or exc.strerror or exc.__class__.__name__
        raise TlsConfigError(f"tls_ca_file {tls.ca_file}: holds no usable PEM certificate ({reason})") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
