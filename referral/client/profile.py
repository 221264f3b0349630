"""Profiles: where a service is and whom to act as, from a JSON or TOML file and ``REFERRAL_*`` variables.

A profile file holds ``url``, ``party_id``, ``client_id`` and the private JWKs ``client_key`` and
``signing_key`` inline (the shape ``referral demo`` writes to ``var/demo/*.json``), or ``client_key_file`` and
``signing_key_file`` naming JWK files relative to the profile. Optionally ``vkey`` pins the audit log's
verifier key. Files holding private keys must not be readable by group or others (like ssh's keys).

Precedence: explicit arguments, then ``REFERRAL_URL``, ``REFERRAL_PARTY_ID``, ``REFERRAL_CLIENT_ID``,
``REFERRAL_CLIENT_KEY_FILE``, ``REFERRAL_SIGNING_KEY_FILE``, ``REFERRAL_VKEY``, then the profile file: the one
given, else ``$REFERRAL_PROFILE``, else ``$XDG_CONFIG_HOME/referral/profile.json`` (``~/.config/...``) if
it exists.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from referral.client.errors import ConfigurationError
from referral.client.keys import Credentials

_ENVIRONMENT = {
    "url": "REFERRAL_URL",
    "party_id": "REFERRAL_PARTY_ID",
    "client_id": "REFERRAL_CLIENT_ID",
    "client_key_file": "REFERRAL_CLIENT_KEY_FILE",
    "signing_key_file": "REFERRAL_SIGNING_KEY_FILE",
    "vkey": "REFERRAL_VKEY",
}


@dataclass(frozen=True)
class Profile:
    """A service URL, the credentials to act with there (if any), and a pinned audit verifier key."""

    url: str | None
    credentials: Credentials | None
    vkey: str | None = None
    path: Path | None = None


def default_profile_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/referral/profile.json``, ``~/.config/referral/profile.json`` by default."""
    environ = os.environ if environ is None else environ
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(config_home) / "referral" / "profile.json"


def _require_private_file(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - permission bits mean nothing there
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigurationError(
            f"{path} holds a private key and is readable by others (mode {mode:o}); chmod 600 it"
        )


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        document = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(
            f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}"
        ) from exc
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path} must hold an object")
    return document


def _holds_private_key(document: Mapping[str, Any]) -> bool:
    return any(
        isinstance(document.get(name), Mapping) and "d" in document[name]
        for name in ("client_key", "signing_key")
    )


def read_key_file(path: Path) -> dict[str, Any]:
    """A private JWK from a 0600 file."""
    document = _read_document(path)
    _require_private_file(path)
    return document


def load_profile(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    url: str | None = None,
) -> Profile:
    """The profile from ``path`` (or the default places), overlaid with the environment and ``url``."""
    environ = os.environ if environ is None else environ
    chosen = (
        Path(path) if path else Path(environ["REFERRAL_PROFILE"]) if environ.get("REFERRAL_PROFILE") else None
    )
    if chosen is None and default_profile_path(environ).exists():
        chosen = default_profile_path(environ)
    document: dict[str, Any] = {}
    if chosen is not None:
        document = _read_document(chosen)
        if _holds_private_key(document):
            _require_private_file(chosen)
    base = chosen.parent if chosen is not None else Path.cwd()
    for name, variable in _ENVIRONMENT.items():
        if environ.get(variable):
            document[name] = environ[variable]
            if name.endswith("_file"):
                # A key file named in the environment is relative to the working directory.
                document[name] = str(Path(environ[variable]).expanduser().resolve())
                document.pop(name.removesuffix("_file"), None)
    for name in ("client_key", "signing_key"):
        file_name = document.get(f"{name}_file")
        if file_name and name not in document:
            document[name] = read_key_file(base / Path(str(file_name)).expanduser())
    credentials = Credentials.from_mapping(document) if document.get("client_key") else None
    return Profile(
        url=url or document.get("url"),
        credentials=credentials,
        vkey=document.get("vkey"),
        path=chosen,
    )
