"""A headless stand-in browser for OAuth authorization flows in tests (Python standard library only).

Given an authorization URL, it does what a person's browser would do in an OAuth flow, with
no person: it follows redirects with a persistent cookie jar, tells the test identity provider
who is logging in, approves simple consent forms, and stops at the OAuth client's redirect URI.

- Cookies live in a Mozilla-format cookie jar file (`--cookie-jar`), session cookies included,
  so an identity provider's login session carries across runs like a browser profile does.
  Cookies ignore ports (as in real browsers): every server on 127.0.0.1 shares one jar.
  `Secure` cookies (`__Host-...`) are sent back over plain http to loopback hosts, as browsers
  treat http://localhost and 127.0.0.1 as secure contexts.
- `--user alice` sets the cookie `test_user=alice` on every host visited; the test identity
  provider (`tests/idp/test-idp.mjs`) logs that account in. Without it the provider picks its
  default user, or the user of the session already in the jar.
- Consent forms: a 200 HTML page with a `<form>` is submitted, as a browser would when the
  user clicks "approve". The form chosen is the first one holding a `decision` field or button,
  else the first form. Its fields are sent as they are (hidden and text inputs, checked boxes,
  selected options) with its `method` (default GET) to its `action` (default: the page), plus
  the clicked button: the one named `decision` with value `approve` (or `deny` with
  `--consent deny`), else a submit button whose value or label reads like approve/allow
  (deny/cancel), and when the form has no `decision` button, `decision=approve` (`deny`) is
  added. Submissions carry `Origin` and `Referer`, as a browser's do. So a gateway consent page
  works with this browser when its approve button is `<button name="decision" value="approve">`.
- The flow ends when a redirect (or form action) targets the client's callback: the
  `redirect_uri` parameter of the first URL (or `--callback-prefix`). The result is the callback
  URL and its query parameters (`code`, `state`, `iss`, or `error`...). With `--deliver` the
  browser then calls the callback, retrying while nothing listens there yet (mcp-remote opens
  the browser before it binds its callback port).

`--visit` (`visit(url, ...)`) opens a link instead, as a person clicking it in a chat: the
same redirects, cookies and consent forms, ending at the first page that is neither a
redirect nor a form (e.g. a "connected" or a refusal page), reported as `final_url`,
`final_status` and its visible text `final_text`.

Three ways to use it:

- module: `from browser import authorize` (or `authorization_callback_params(url, ...)`, which
  returns only the query parameters);
- CLI: `python3 browser.py URL [--user alice] [--cookie-jar FILE] [--deliver]` prints one JSON
  document (`callback_url`, `params`, `hops`, `delivered_status`, `error`) and exits 0 when the
  callback was reached (and, with `--deliver`, answered);
- `BROWSER` for MCP clients that open a browser (mcp-remote, the Inspector):
  `BROWSER=tests/clients/browser-open`, configured by environment variables (see that file).
"""

from __future__ import annotations

import argparse
import html.parser
import http.cookiejar
import ipaddress
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

USER_AGENT = "portcullis-test-browser/1"
TEST_USER_COOKIE = "test_user"
# Bounds: a flow longer than this is a redirect loop, not an authorization.
MAX_HOPS = 40
REQUEST_TIMEOUT_SECS = 10.0
# Parameters whose values are credentials: shown redacted in the hop log.
REDACTED_PARAMS = {"code", "access_token", "id_token", "refresh_token", "client_secret", "code_verifier"}
APPROVE_WORDS = ("approve", "allow", "accept", "authorize", "authorise", "consent", "continue", "yes")
DENY_WORDS = ("deny", "reject", "decline", "cancel", "no")


class BrowserError(Exception):
    """The flow could not reach the callback (the message says where it stopped)."""


@dataclass
class Hop:
    method: str
    url: str
    status: int | None
    location: str | None = None


@dataclass
class BrowserResult:
    """Where the flow ended: the callback URL and its query parameters."""

    callback_url: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    hops: list[Hop] = field(default_factory=list)
    # HTTP status of the callback call (`deliver_callback`), None when not delivered.
    delivered_status: int | None = None
    error: str | None = None
    # `visit`: the page the flow ended on (not a redirect, not a form to submit).
    final_url: str | None = None
    final_status: int | None = None
    final_text: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackSecureCookiePolicy(http.cookiejar.DefaultCookiePolicy):
    """Sends `Secure` cookies over http to loopback hosts, as browsers do for localhost."""

    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        if cookie.secure and is_loopback_host(urllib.parse.urlsplit(request.get_full_url()).hostname):
            return True
        return super().return_ok_secure(cookie, request)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class _Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    # (name, value, label) of each submit button.
    buttons: list[tuple[str, str, str]] = field(default_factory=list)


class _FormParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self._form: _Form | None = None
        self._button: list[Any] | None = None
        self._select: list[Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name.lower(): value or "" for name, value in attrs}
        if tag == "form":
            self._form = _Form(attributes.get("action", ""), attributes.get("method", "get").lower() or "get")
            self.forms.append(self._form)
            return
        if self._form is None:
            return
        name = attributes.get("name", "")
        if tag == "input":
            kind = attributes.get("type", "text").lower()
            value = attributes.get("value", "")
            if kind in ("submit", "image"):
                self._form.buttons.append((name, value, value))
            elif kind in ("checkbox", "radio"):
                if "checked" in attributes and name:
                    self._form.fields.append((name, value or "on"))
            elif kind not in ("button", "reset", "file") and name:
                self._form.fields.append((name, value))
        elif tag == "button":
            if attributes.get("type", "submit").lower() == "submit":
                self._button = [name, attributes.get("value", ""), ""]
        elif tag == "select" and name:
            self._select = [name, None, None]
        elif tag == "option" and self._select is not None:
            value = attributes.get("value", "")
            if self._select[1] is None:
                self._select[1] = value
            if "selected" in attributes:
                self._select[2] = value
        elif tag == "textarea" and name:
            self._form.fields.append((name, ""))

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[2] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "button" and self._button is not None and self._form is not None:
            name, value, label = self._button
            self._form.buttons.append((name, value, label.strip()))
            self._button = None
        elif tag == "select" and self._select is not None and self._form is not None:
            name, first, selected = self._select
            self._form.fields.append((name, selected if selected is not None else first or ""))
            self._select = None


def _choose_form(forms: list[_Form]) -> _Form | None:
    for form in forms:
        if any(name == "decision" for name, _ in form.fields) or any(
            name == "decision" for name, _, _ in form.buttons
        ):
            return form
    return forms[0] if forms else None


def _form_submission(form: _Form, decision: str) -> list[tuple[str, str]]:
    words = APPROVE_WORDS if decision == "approve" else DENY_WORDS
    fields = [(name, value) for name, value in form.fields if name != "decision"]
    clicked: tuple[str, str] | None = None
    for name, value, _ in form.buttons:
        if name == "decision" and value.lower() == decision:
            clicked = (name, value)
            break
    if clicked is None:
        for name, value, label in form.buttons:
            text = f"{value} {label}".lower()
            if name and name != "decision" and any(word in text.split() or word in text for word in words):
                clicked = (name, value)
                break
    if clicked is not None:
        fields.append(clicked)
    if clicked is None or clicked[0] != "decision":
        if not any(name == "decision" for name, _ in fields):
            fields.append(("decision", decision))
    return fields


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    query = [
        (name, "REDACTED" if name in REDACTED_PARAMS else value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _callback_matches(url: str, callback_prefix: str) -> bool:
    target = urllib.parse.urlsplit(url)
    callback = urllib.parse.urlsplit(callback_prefix)
    return (
        target.scheme == callback.scheme
        and target.netloc.lower() == callback.netloc.lower()
        and target.path == callback.path
    )


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Browser:
    """One browser profile: a cookie jar (optionally a file) and an opener that never follows redirects."""

    def __init__(self, cookie_jar_path: str | None = None, user: str | None = None) -> None:
        self.cookie_jar_path = cookie_jar_path
        self.user = user
        self.jar = http.cookiejar.MozillaCookieJar(cookie_jar_path, policy=LoopbackSecureCookiePolicy())
        if cookie_jar_path and os.path.exists(cookie_jar_path):
            self.jar.load(ignore_discard=True, ignore_expires=False)
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def save(self) -> None:
        if self.cookie_jar_path:
            directory = os.path.dirname(os.path.abspath(self.cookie_jar_path))
            os.makedirs(directory, exist_ok=True)
            temporary = f"{self.cookie_jar_path}.tmp-{os.getpid()}"
            self.jar.save(temporary, ignore_discard=True, ignore_expires=False)
            os.replace(temporary, self.cookie_jar_path)

    def _set_test_user(self, url: str) -> None:
        if not self.user:
            return
        request = urllib.request.Request(url)
        domain = http.cookiejar.eff_request_host(request)[1]
        self.jar.set_cookie(
            http.cookiejar.Cookie(
                version=0, name=TEST_USER_COOKIE, value=self.user, port=None, port_specified=False,
                domain=domain, domain_specified=False, domain_initial_dot=False, path="/",
                path_specified=True, secure=False, expires=None, discard=True, comment=None,
                comment_url=None, rest={},
            )
        )

    def request(
        self, method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One request, no redirects followed: (status, headers, body)."""
        self._set_test_user(url)
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("User-Agent", USER_AGENT)
        request.add_header("Accept", "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with self.opener.open(request, timeout=REQUEST_TIMEOUT_SECS) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:  # 3xx (not followed), 4xx, 5xx
            with error:
                return error.code, dict(error.headers.items()), error.read()


def authorize(
    url: str,
    *,
    user: str | None = None,
    cookie_jar: str | None = None,
    callback_prefix: str | None = None,
    consent: str = "approve",
    deliver_callback: bool = False,
    timeout_secs: float = 30.0,
) -> BrowserResult:
    """Walks an authorization flow from `url` to the client's callback.

    Returns the result with `callback_url` and `params` set; raises `BrowserError` (with the
    partial result in `error.args[1]`) when the flow stops anywhere else.
    """
    if consent not in ("approve", "deny"):
        raise ValueError(f"consent must be approve or deny, got {consent!r}")
    deadline = time.monotonic() + timeout_secs
    result = BrowserResult()
    if callback_prefix is None:
        redirect_uris = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("redirect_uri")
        if not redirect_uris:
            raise BrowserError(
                "the authorization URL has no redirect_uri parameter: pass callback_prefix", result
            )
        callback_prefix = redirect_uris[0]

    browser = Browser(cookie_jar, user)
    try:
        method, body, headers = "GET", None, {}
        current = url
        for _ in range(MAX_HOPS):
            if time.monotonic() > deadline:
                raise BrowserError(f"the flow took longer than {timeout_secs} s", result)
            if _callback_matches(current, callback_prefix):
                result.callback_url = current
                result.params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(current).query))
                break
            status, response_headers, content = browser.request(method, current, body, headers)
            lower_headers = {name.lower(): value for name, value in response_headers.items()}
            location = lower_headers.get("location")
            result.hops.append(Hop(method, _redact(current), status, _redact(location) if location else None))
            if 300 <= status < 400 and location:
                current = urllib.parse.urljoin(current, location)
                # 307/308 keep the method and body; every other redirect becomes a GET.
                if status not in (307, 308):
                    method, body, headers = "GET", None, {}
                continue
            content_type = lower_headers.get("content-type", "")
            text = content.decode("utf-8", errors="replace")
            if status == 200 and "html" in content_type:
                parser = _FormParser()
                parser.feed(text)
                form = _choose_form(parser.forms)
                if form is None:
                    raise BrowserError(f"stopped at a page without a form: {current}\n{text[:2000]}", result)
                fields = _form_submission(form, consent)
                target = urllib.parse.urljoin(current, form.action or current)
                encoded = urllib.parse.urlencode(fields)
                headers = {"Origin": _origin(current), "Referer": current}
                if form.method == "post":
                    method, body = "POST", encoded.encode()
                    headers["Content-Type"] = "application/x-www-form-urlencoded"
                    if _callback_matches(target, callback_prefix):
                        # form_post response mode: the parameters travel in the body.
                        result.callback_url = target
                        result.params = dict(fields)
                        break
                else:
                    split = urllib.parse.urlsplit(target)
                    target = urllib.parse.urlunsplit(split._replace(query=encoded))
                    method, body = "GET", None
                current = target
                continue
            raise BrowserError(
                f"stopped at {current}: HTTP {status} ({content_type or 'no content type'})\n{text[:2000]}",
                result,
            )
        else:
            raise BrowserError(f"more than {MAX_HOPS} hops: a redirect loop?", result)

        if deliver_callback:
            result.delivered_status = _deliver(browser, result.callback_url, deadline, result)
    finally:
        browser.save()
    return result


class _TextOfPage(html.parser.HTMLParser):
    """The visible text of a page (no tags, no style or script content)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visit(
    url: str,
    *,
    user: str | None = None,
    cookie_jar: str | None = None,
    consent: str = "approve",
    timeout_secs: float = 30.0,
) -> BrowserResult:
    """Opens `url` as a person would (a link in a chat): follows redirects with the cookie
    jar, submits consent forms, and stops at the first page that is neither (a "connected"
    page, an error page). That page is the result: `final_url`, `final_status` and its
    visible text in `final_text`. Raises `BrowserError` only when the walk itself fails."""
    deadline = time.monotonic() + timeout_secs
    result = BrowserResult()
    browser = Browser(cookie_jar, user)
    try:
        method, body, headers = "GET", None, {}
        current = url
        for _ in range(MAX_HOPS):
            if time.monotonic() > deadline:
                raise BrowserError(f"the visit took longer than {timeout_secs} s", result)
            status, response_headers, content = browser.request(method, current, body, headers)
            lower_headers = {name.lower(): value for name, value in response_headers.items()}
            location = lower_headers.get("location")
            result.hops.append(Hop(method, _redact(current), status, _redact(location) if location else None))
            if 300 <= status < 400 and location:
                current = urllib.parse.urljoin(current, location)
                if status not in (307, 308):
                    method, body, headers = "GET", None, {}
                continue
            text = content.decode("utf-8", errors="replace")
            content_type = lower_headers.get("content-type", "")
            if status == 200 and "html" in content_type:
                parser = _FormParser()
                parser.feed(text)
                form = _choose_form(parser.forms)
                if form is not None:
                    fields = _form_submission(form, consent)
                    target = urllib.parse.urljoin(current, form.action or current)
                    encoded = urllib.parse.urlencode(fields)
                    headers = {"Origin": _origin(current), "Referer": current}
                    if form.method == "post":
                        method, body = "POST", encoded.encode()
                        headers["Content-Type"] = "application/x-www-form-urlencoded"
                    else:
                        split = urllib.parse.urlsplit(target)
                        target = urllib.parse.urlunsplit(split._replace(query=encoded))
                        method, body = "GET", None
                    current = target
                    continue
            page = _TextOfPage()
            page.feed(text)
            result.final_url = _redact(current)
            result.final_status = status
            result.final_text = " ".join(page.parts)[:4000] if "html" in content_type else text[:4000]
            return result
        raise BrowserError(f"more than {MAX_HOPS} hops: a redirect loop?", result)
    finally:
        browser.save()


def _deliver(browser: Browser, callback_url: str, deadline: float, result: BrowserResult) -> int:
    """Calls the client's callback, retrying while its listener is not up yet."""
    delay = 0.05
    while True:
        try:
            status, _, _ = browser.request("GET", callback_url)
            result.hops.append(Hop("GET", _redact(callback_url), status))
            return status
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            if time.monotonic() + delay > deadline:
                raise BrowserError(f"the callback {_redact(callback_url)} never answered: {reason}", result) from error
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def authorization_callback_params(url: str, **options: Any) -> dict[str, str]:
    """`authorize(url, **options).params`: the callback's query parameters (code, state, iss...)."""
    return authorize(url, **options).params


def _parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the authorization URL to open")
    parser.add_argument("--user", default=os.environ.get("PORTCULLIS_BROWSER_USER") or None,
                        help="test_user cookie for the test IdP (env PORTCULLIS_BROWSER_USER)")
    parser.add_argument("--cookie-jar", default=os.environ.get("PORTCULLIS_BROWSER_COOKIE_JAR") or None,
                        help="Mozilla cookie jar file, created if missing (env PORTCULLIS_BROWSER_COOKIE_JAR)")
    parser.add_argument("--callback-prefix", default=None,
                        help="the client's redirect URI (default: the URL's redirect_uri parameter)")
    parser.add_argument("--consent", choices=("approve", "deny"),
                        default=os.environ.get("PORTCULLIS_BROWSER_CONSENT") or "approve",
                        help="what to click on consent forms (env PORTCULLIS_BROWSER_CONSENT)")
    parser.add_argument("--deliver", action="store_true", help="call the callback URL, retrying until it answers")
    parser.add_argument("--visit", action="store_true",
                        help="open the URL as a link and stop at the page the flow ends on (final_*)")
    parser.add_argument("--timeout-secs", type=float,
                        default=float(os.environ.get("PORTCULLIS_BROWSER_TIMEOUT_SECS") or 30.0))
    parser.add_argument("--log", default=os.environ.get("PORTCULLIS_BROWSER_LOG") or None,
                        help="also append the JSON result to this file (env PORTCULLIS_BROWSER_LOG)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    arguments = _parse_arguments(argv)
    try:
        if arguments.visit:
            result = visit(
                arguments.url,
                user=arguments.user,
                cookie_jar=arguments.cookie_jar,
                consent=arguments.consent,
                timeout_secs=arguments.timeout_secs,
            )
        else:
            result = authorize(
                arguments.url,
                user=arguments.user,
                cookie_jar=arguments.cookie_jar,
                callback_prefix=arguments.callback_prefix,
                consent=arguments.consent,
                deliver_callback=arguments.deliver,
                timeout_secs=arguments.timeout_secs,
            )
        status = 0
    except BrowserError as error:
        result = error.args[1] if len(error.args) > 1 else BrowserResult()
        result.error = str(error.args[0])
        status = 1
    except Exception as error:  # noqa: BLE001 - reported as the run's error
        result = BrowserResult(error=f"{type(error).__name__}: {error}")
        status = 1
    document = json.dumps(result.to_json())
    print(document, flush=True)
    if arguments.log:
        with open(arguments.log, "a", encoding="utf-8") as log:
            log.write(document + "\n")
    if result.error:
        print(f"browser: {result.error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
