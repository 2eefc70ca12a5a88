"""The one way camlabel talks to AWS: a boto3 client factory and one error mapping.

Every client has connect/read timeouts and bounded retries in botocore's ``standard`` mode
(``max_attempts``, else ``$AWS_MAX_ATTEMPTS``, else :data:`DEFAULT_MAX_ATTEMPTS`). Every
botocore failure becomes a camlabel error through :func:`error`: missing credentials a
:class:`~camlabel.errors.ConfigError`, an unreachable endpoint
:class:`~camlabel.errors.BackendUnavailable`, a refusal (``ClientError``) a
:class:`~camlabel.errors.BackendError` with its AWS code, and an IAM hint when access is denied.

Used by the Ground Truth backend and the SageMaker training launcher; boto3 and botocore
are imported on first use. The Lambdas of ``camlabel/lambdas`` are deployed as single
files and do not import this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

from camlabel.errors import BackendError, BackendUnavailable, CamlabelError, ConfigError

#: botocore's ``retries.max_attempts`` (retries after the first try) when neither the caller
#: nor AWS_MAX_ATTEMPTS sets it.
DEFAULT_MAX_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
#: Error codes of a refusal for lack of permission.
ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "403"})
HINT_IAM = "the credentials (or the job's role) lack a permission: see docs/groundtruth.md (IAM)"
HINT_UNREACHABLE = "check the network, --region and --endpoint-url / AWS_ENDPOINT_URL"


def session(region: str | None = None, *, what: str = "the AWS call") -> Any:
    """A boto3 Session in ``region`` (None: the AWS chain's region); ConfigError without one."""
    import boto3

    sess = boto3.Session(region_name=region)
    if not sess.region_name:
        raise ConfigError(
            f"no AWS region for {what}. Received: region=None",
            hint="pass --region (or set AWS_DEFAULT_REGION / groundtruth.region)",
        )
    return sess


def max_attempts_from_env(default: int = DEFAULT_MAX_ATTEMPTS) -> int:
    """``$AWS_MAX_ATTEMPTS`` (botocore's own variable), else ``default``."""
    raw = os.environ.get("AWS_MAX_ATTEMPTS")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"AWS_MAX_ATTEMPTS must be an integer. Received: AWS_MAX_ATTEMPTS={raw!r}"
        ) from None


def client(
    service: str,
    region: str | None = None,
    *,
    boto_session: Any = None,
    endpoint_url: str | None = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    max_attempts: int | None = None,
) -> Any:
    """A boto3 client with timeouts and bounded standard-mode retries.

    Args:
        service: ``"s3"``, ``"sagemaker"``...
        region: the client's region; None: ``boto_session``'s (or the AWS chain's).
        boto_session: the Session to build it from (default: a new :func:`session`).
        endpoint_url: another endpoint (tests: moto); boto3 also reads AWS_ENDPOINT_URL.
        max_attempts: botocore's ``retries.max_attempts``, the retries after the first try
            (default: :func:`max_attempts_from_env`).
    """
    from botocore.config import Config

    sess = boto_session if boto_session is not None else session(region, what=service)
    cfg = Config(
        region_name=region or sess.region_name,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={
            "max_attempts": max_attempts_from_env() if max_attempts is None else max_attempts,
            "mode": "standard",
        },
    )
    return sess.client(service, endpoint_url=endpoint_url, config=cfg)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a ``ClientError`` (``"NoSuchKey"``, ``"404"``...), else None."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code", "?"))


def error(exc: BaseException, what: str) -> CamlabelError:
    """The camlabel error for a botocore failure of ``what`` (e.g. ``"PutObject s3://b/k"``)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, msg = err.get("Code", "?"), err.get("Message", "")
        return BackendError(
            f"{what}: {code}: {msg}".rstrip(": "), hint=HINT_IAM if code in ACCESS_DENIED else None
        )
    if isinstance(exc, NoCredentialsError):
        return ConfigError(
            f"no AWS credentials for {what}",
            hint="configure credentials (AWS_PROFILE, aws sso login, an instance role...)",
        )
    if isinstance(exc, EndpointConnectionError | ConnectionError | ReadTimeoutError):
        return BackendUnavailable(f"{what} failed: {exc}", hint=HINT_UNREACHABLE)
    return BackendError(f"{what} failed: {exc}")


def call(send: Callable[[], Any], what: str, *, missing: Collection[str] = ()) -> Any:
    """``send()``, with botocore failures mapped by :func:`error`.

    A refusal whose code is in ``missing`` (``"NoSuchKey"``, ``"ResourceNotFound"``...)
    returns None instead: the caller decides what an absent object or job means.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return send()
    except ClientError as exc:
        if error_code(exc) in missing:
            return None
        raise error(exc, what) from exc
    except BotoCoreError as exc:
        raise error(exc, what) from exc
