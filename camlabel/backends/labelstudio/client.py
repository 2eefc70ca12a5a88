"""The HTTP client half of the Label Studio backend: URL and token, timeouts, bounded retries.

:class:`LabelStudioClient` is the base class of
:class:`~camlabel.backends.labelstudio.backend.LabelStudioBackend` and holds no state of its
own: the backend's ``__init__`` sets the connection settings it reads (``settings``, a resolved
:class:`~camlabel.config.LabelStudioSettings`, and ``timeout``, ``retries``, ``backoff``). It
resolves the server (flag > env > workspace config, by the one resolver, > the workspace's
embedded server), connects lazily through
``label_studio_sdk`` 2.x over one ``httpx`` client, and runs every request with a timeout and
bounded retries with exponential backoff on connection errors and 5xx answers, then raises
:class:`~camlabel.errors.BackendUnavailable`. The token is never put into a message.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from camlabel.errors import BackendError, BackendUnavailable, ConfigError

if TYPE_CHECKING:
    import httpx
    from label_studio_sdk import LabelStudio

    from camlabel.config import LabelStudioSettings
    from camlabel.workspace import Workspace

T = TypeVar("T")
#: Seconds the first request (``GET /health``) may take: it answers in milliseconds.
PROBE_TIMEOUT_S = 10.0

HINT_DOWN = (
    "is the server running? Start the embedded one with: camlabel labelstudio start -w WS; "
    "for another server pass --url and --token (env CAMLABEL_LS_URL / CAMLABEL_LS_TOKEN)"
)


class LabelStudioClient:
    """Connection, retries and error mapping for the Label Studio backend (see the module docstring)."""

    workspace: Workspace
    url: str | None
    timeout: float
    retries: int
    backoff: float
    settings: LabelStudioSettings
    _token: str | None
    _embedded: bool
    _ls: LabelStudio | None
    _http: httpx.Client | None

    def _resolve(self) -> None:
        """Find URL and token (flag > env > workspace config > embedded server); no request yet."""
        if self.url is not None:
            return
        from camlabel.backends.labelstudio.server import load_credentials, running_url

        url = self.settings.url
        embedded_url = running_url(self.workspace)
        if not url:
            if embedded_url is None:
                self._embedded_not_answering()
                raise BackendUnavailable(
                    f"no Label Studio server to talk to: the embedded server of {self.workspace.root} "
                    "is not running and no URL is set",
                    hint=HINT_DOWN,
                )
            url = embedded_url
        url = str(url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"Label Studio URL must start with http:// or https://. Received: url={url!r}",
                hint="e.g. --url http://127.0.0.1:8089",
            )
        self._embedded = embedded_url is not None and same_server(url, embedded_url)
        token = self.settings.token
        if not token:
            creds = load_credentials(self.workspace)
            if creds is not None and (self._embedded or _is_loopback(url)):
                token = creds.token
        if not token:
            raise ConfigError(
                f"no API token for the Label Studio server at {url}",
                hint="pass --token or set CAMLABEL_LS_TOKEN (Label Studio: Account & Settings > "
                "Personal Access Token, or a legacy token if the organisation enables them)",
            )
        self.url = url
        self._token = token

    def _embedded_not_answering(self) -> None:
        """The embedded server's process is alive but /health does not answer: say so."""
        from camlabel.backends.labelstudio.server import status

        st = status(self.workspace)
        if st.running or not st.pid:
            return
        raise BackendUnavailable(
            f"the embedded Label Studio server of {self.workspace.root} (pid {st.pid}, {st.url}) "
            f"is running but does not answer: {st.message} (waited 2 s)",
            hint="it is frozen (stopped with SIGSTOP, swapping?) or overloaded: check its log "
            f"{st.log_path}, or restart it with camlabel labelstudio stop -w WS, then "
            "camlabel labelstudio start -w WS",
        )

    @property
    def ls(self) -> LabelStudio:
        if self._ls is None:
            import httpx
            from label_studio_sdk import LabelStudio

            self._resolve()
            assert self.url is not None and self._token is not None
            self._http = httpx.Client(
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                follow_redirects=True,
            )
            self._ls = LabelStudio(
                base_url=self.url,
                api_key=self._token,
                httpx_client=self._http,
                timeout=self.timeout,
            )
            self._probe()
        return self._ls

    def _probe(self) -> None:
        """One cheap request with a short timeout before the real ones: a frozen server is
        then reported after PROBE_TIMEOUT_S, not after the (long) timeout of an export."""
        assert self._http is not None
        http, url = self._http, f"{self.url}/health"
        wait = min(self.timeout, PROBE_TIMEOUT_S)
        try:
            self._retrying("answer /health", lambda: http.get(url, timeout=wait).status_code)
        except BackendUnavailable:
            self.close()
            raise

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None
        self._ls = None

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text

    def _opts(self) -> dict[str, Any]:
        # The SDK's own retries are off: POST /import is not idempotent, so retrying is
        # this module's job (it re-lists the project before re-sending a chunk).
        return {"max_retries": 0, "timeout": self.timeout}

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one SDK request with bounded retries; map failures to camlabel errors.

        Only for idempotent requests: a request whose answer was lost is sent again.
        """
        self.ls  # noqa: B018  (connect lazily, resolving URL and token)
        return self._retrying(what, lambda: fn(*args, request_options=self._opts(), **kwargs))

    def _retrying(self, what: str, send: Callable[[], T], retries: int | None = None) -> T:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        retries = self.retries if retries is None else retries
        last = ""
        started = time.monotonic()
        for attempt in range(retries + 1):
            try:
                return send()
            except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
                # Connected, then no answer: a frozen or overloaded server. Sending again
                # would only multiply the wait, so this is the end (the bound is the timeout).
                waited = time.monotonic() - started
                raise BackendUnavailable(
                    self._scrub(
                        f"Label Studio at {self.url} accepted the connection but did not "
                        f"answer: {what} timed out after {waited:.0f} s ({type(exc).__name__})"
                    ),
                    hint="the server is frozen or overloaded: check it (camlabel labelstudio "
                    "status -w WS, or its log) and run the command again; for a slow server "
                    "raise the timeout with CAMLABEL_LS_TIMEOUT=SECONDS",
                ) from None
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            except ApiError as exc:
                code = exc.status_code
                if code is not None and code < 500 and code not in (408, 429):
                    raise self._refused(what, code, exc.body) from None
                last = f"HTTP {code}"
            if attempt < retries:
                time.sleep(self._delay(attempt))
        raise BackendUnavailable(
            self._scrub(
                f"Label Studio at {self.url} did not answer: {what} failed after "
                f"{retries + 1} attempt(s) in {time.monotonic() - started:.0f} s ({last})"
            ),
            hint=HINT_DOWN,
        )

    def _delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2**attempt, 8.0))

    def _refused(self, what: str, code: int, body: Any) -> BackendError:
        detail = body.get("detail", body) if isinstance(body, Mapping) else body
        text = self._scrub(f"{detail!s}"[:400])
        if code in (401, 403):
            return BackendError(
                f"Label Studio at {self.url} refused {what}: HTTP {code} ({text})",
                hint="check the token (--token / CAMLABEL_LS_TOKEN); a legacy token needs "
                "'legacy API tokens' enabled in the organisation settings",
            )
        return BackendError(f"Label Studio at {self.url} refused {what}: HTTP {code} ({text})")

    def _raw(
        self, what: str, method: str, path: str, *, retries: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A request outside the SDK's typed methods, with the SDK's auth and the same retries.

        Used for the multipart upload, the server clock, and the bulk import (the SDK's
        per-field serialization of a 500-task request costs a third of the push time).
        """
        from label_studio_sdk.core.api_error import ApiError

        ls = self.ls
        assert self._http is not None
        http = self._http
        # The SDK's client wrapper knows the auth scheme (legacy "Token" or PAT "Bearer").
        headers = dict(ls._client_wrapper.get_headers())

        def send() -> httpx.Response:
            resp = http.request(method, f"{self.url}{path}", headers=headers, **kwargs)
            if resp.status_code >= 400:
                try:
                    body: Any = resp.json()
                except ValueError:
                    body = resp.text
                raise ApiError(status_code=resp.status_code, headers=dict(resp.headers), body=body)
            return resp

        return self._retrying(what, send, retries)


def _split(url: str) -> tuple[str, str, int]:
    p = urllib.parse.urlsplit(url)
    port = p.port or (443 if p.scheme == "https" else 80)
    return p.scheme, (p.hostname or "").lower(), port


def same_server(a: str, b: str) -> bool:
    if not a or not b:
        return False
    sa, sb = _split(a), _split(b)
    loop = {"127.0.0.1", "localhost", "::1"}
    ha = "loopback" if sa[1] in loop else sa[1]
    hb = "loopback" if sb[1] in loop else sb[1]
    return (sa[0], ha, sa[2]) == (sb[0], hb, sb[2])


def _is_loopback(url: str) -> bool:
    return _split(url)[1] in ("127.0.0.1", "localhost", "::1")
