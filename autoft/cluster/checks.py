"""Checks that a search can run away from this machine: a tracking store and storage the
cluster's nodes can reach, a Ray address, and the Ray token that address needs."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from autoft.errors import InputError

SHARED_STORAGE_FIX = "give an absolute path on storage every node mounts, e.g. --set storage=/mnt/shared/autoft-runs"
TRACKING_FIX = ("run an MLflow server the cluster can reach (mlflow server --host 0.0.0.0 --port 5000 ...) and "
                "pass --set tracking.uri=http://HOST:5000, or set MLFLOW_TRACKING_URI")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


def is_local_tracking(uri: str) -> bool:
    """A store only this machine (or one node) can read: SQLite, files, a bare path."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("sqlite", "file"):
        return True
    if scheme == "databricks" or uri == "databricks":
        return False
    return "://" not in uri


def check_remote_tracking(uri: str | None) -> None:
    if not uri:
        raise InputError("tracking.uri", "not set, so the search would log to SQLite (sqlite:///<storage>/mlflow.db) "
                         "on a cluster node where nobody reads it", TRACKING_FIX)
    if is_local_tracking(uri):
        raise InputError("tracking.uri", f"'{uri}' is a local store that a cluster cannot share", TRACKING_FIX)


def check_shared_storage(storage: str) -> None:
    """Storage every node writes to: an absolute path (NFS, Lustre, a mounted bucket)."""
    if "://" in storage:
        raise InputError("storage", f"'{storage}' is a URI; the search keeps optuna.db and checkpoints under a "
                         "folder path", "mount it on every node and " + SHARED_STORAGE_FIX.removeprefix("give "))
    if storage.startswith("~"):
        raise InputError("storage", f"'{storage}' would expand to a home folder on the cluster, not here",
                         SHARED_STORAGE_FIX)
    if not posixpath.isabs(storage):
        raise InputError("storage", f"'{storage}' is relative: on the cluster it would land in the job's "
                         "temporary folder and be lost with it", SHARED_STORAGE_FIX)


def host_of(url: str) -> str:
    try:
        return (urlsplit(url if "://" in url else f"http://{url}").hostname or "").lower()
    except ValueError:
        return ""


def check_address(address: str | None) -> str:
    """The Ray dashboard's HTTP address (Jobs API), e.g. http://HEAD:8265."""
    if not address:
        raise InputError("--address", "no Ray cluster given",
                         "pass --address http://HEAD:8265 (the head's dashboard) or set RAY_API_SERVER_ADDRESS")
    address = address.strip()
    if "://" not in address:
        address = f"http://{address}"
    scheme, rest = address.split("://", 1)
    scheme = scheme.lower()
    address = f"{scheme}://{rest.rstrip('/')}"
    if scheme not in ("http", "https"):
        raise InputError("--address", f"'{address}' is not the dashboard's HTTP address",
                         "pass --address http://HEAD:8265 (the Jobs API, not ray:// or the GCS port)")
    if not host_of(address):
        raise InputError("--address", f"'{address}' names no host", "pass --address http://HEAD:8265")
    return address


def address_from_env(env: Mapping[str, str]) -> str | None:
    """What Ray's own job CLI would use: RAY_API_SERVER_ADDRESS, else an HTTP RAY_ADDRESS."""
    api = env.get("RAY_API_SERVER_ADDRESS")
    if api:
        return api
    addr = env.get("RAY_ADDRESS", "")
    return addr if addr.startswith(("http://", "https://")) else None


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class AuthToken:
    value: str
    source: str  # where it came from, for messages (never the token itself)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def find_auth_token(env: Mapping[str, str], home: Path) -> AuthToken | None:
    """The Ray auth token, looked up the way Ray does: RAY_AUTH_TOKEN, then the file
    RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. None when there is none."""
    value = env.get("RAY_AUTH_TOKEN", "").strip()
    if value:
        return AuthToken(value, "RAY_AUTH_TOKEN")
    path_env = env.get("RAY_AUTH_TOKEN_PATH")
    if path_env:
        path = Path(path_env).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            value = ""
        if not value:
            raise InputError("token", f"RAY_AUTH_TOKEN_PATH is '{path_env}' but that file is missing, unreadable or "
                             "empty", "point it at a copy of the head's token (`ray get-auth-token` on the head "
                             "prints it), or unset it")
        return AuthToken(value, f"RAY_AUTH_TOKEN_PATH ({path})")
    path = home / ".ray" / "auth_token"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return AuthToken(value, str(path)) if value else None


TOKEN_FIX = ("copy the head's token (`ray get-auth-token` on the head prints it) to ~/.ray/auth_token, "
             "or set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it")


def auth_error(message: str, address: str, token: AuthToken | None) -> InputError:
    """One line for the Jobs API's 401 (no token) or 403 (wrong token)."""
    refused = message.startswith("Authentication failed") or "Invalid authentication token" in message
    if token is not None and refused:
        return InputError("token", f"the Ray cluster at {address} refused the token from {token.source}: "
                          "it is not this cluster's token", TOKEN_FIX)
    if token is not None:
        return InputError("token", f"the Ray cluster at {address} did not accept the token from {token.source}",
                          TOKEN_FIX)
    return InputError("token", f"the Ray cluster at {address} requires an auth token and none was found "
                      "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)", TOKEN_FIX)
