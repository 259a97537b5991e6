"""Fetch: the bytes at an http(s) URL, within a deadline and a size cap (images given by URL).

    data = fetch_url("https://example.com/cat.jpg")      # bytes, or FetchError naming the URL

Limits, each settable per call (timeout_s=, max_bytes=) or by an environment variable:
    MINIBRIDGE_DOWNLOAD_TIMEOUT    seconds for the whole download, connect to last byte (default 60)
    MINIBRIDGE_MAX_DOWNLOAD_BYTES  the largest body accepted (default 50_000_000: 50 MB)
A server that drips a byte every few seconds or sends an endless body is cut off at these limits;
a body larger than the cap is refused from its Content-Length before it is read, and otherwise
while it streams, never holding more than the cap in memory. Only http:// and https:// are fetched
(redirects included), only a 2xx answer is accepted, and a web page (Content-Type text/html) is
refused as not an image.
"""

import http.client
import os
import threading
import time
import urllib.error
import urllib.request

# Defaults, settable per call or by the environment variables above.
DEFAULT_TIMEOUT_S = 60.0  # the whole download, not each read
DEFAULT_MAX_BYTES = 50_000_000  # 50 MB: larger than any photo worth scoring
TIMEOUT_ENV, MAX_BYTES_ENV = "MINIBRIDGE_DOWNLOAD_TIMEOUT", "MINIBRIDGE_MAX_DOWNLOAD_BYTES"

STALL_S = 10.0  # no single wait (connect, or one read) lasts longer than this, nor than the deadline
CHUNK = 64 * 1024  # bytes asked for per read
GRACE_S = 0.5  # how much past its deadline a download may take to report how it ran out of time


class FetchError(OSError):
    """A URL that could not be fetched within the limits; the message names the URL."""


def is_url(s):
    """True for a string that starts with http:// or https:// (in any case, as URLs allow)."""
    return isinstance(s, str) and s[:8].lower().startswith(("http://", "https://"))


def limit(value, env, default):
    """A positive limit: `value` if given, else the environment variable `env` if set, else `default`."""
    if value is None:
        text = os.environ.get(env, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            raise ValueError(f"{env} must be a positive number, got {text!r}") from None
    if not value > 0:  # subtle: `not >` also refuses NaN
        raise ValueError(f"a download limit ({env}) must be a positive number, got {value!r}")
    return value


def fetch_url(url, *, timeout_s=None, max_bytes=None):
    """The body at `url` as bytes; FetchError (an OSError) naming the URL on any failure.

    timeout_s: seconds for the whole download (default: $MINIBRIDGE_DOWNLOAD_TIMEOUT, else 60).
    max_bytes: the largest body accepted (default: $MINIBRIDGE_MAX_DOWNLOAD_BYTES, else 50 MB).
    """
    timeout_s = limit(timeout_s, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    max_bytes = int(limit(max_bytes, MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    if not is_url(url):
        raise FetchError(f"{url!r} is not an http:// or https:// URL; only those are downloaded")
    too_slow = (f"Downloading {url} took longer than the {timeout_s:g} s limit; set {TIMEOUT_ENV} (seconds) "
                "or pass timeout_s to allow longer")
    # subtle: a name lookup, and a server that drips its headers, wait inside urllib where no clock of
    #   ours can look; so the download runs in a thread and we wait for it until the deadline, no longer.
    #   A thread cut off at the deadline ends on its own (each of its waits is at most STALL_S).
    outcome = {}

    def download():
        try:
            outcome["data"] = _download(url, timeout_s, max_bytes, too_slow)
        except Exception as e:  # noqa: BLE001 -- handed to the caller's thread below
            outcome["error"] = e

    worker = threading.Thread(target=download, daemon=True)
    worker.start()
    worker.join(timeout_s + GRACE_S)  # the grace: a wait the thread itself times out says more
    if worker.is_alive():
        raise FetchError(too_slow)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


def _download(url, timeout_s, max_bytes, too_slow):
    """fetch_url's work, in its thread: the body within the cap, checking the clock between reads."""
    deadline = time.monotonic() + timeout_s
    wait = min(timeout_s, STALL_S)
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    try:
        # subtle: urllib's timeout bounds each wait (the connect, then every read), not the whole
        # download, so a server dripping a byte every few seconds never trips it: we read in chunks and
        # check the clock before each one.
        with opener.open(url, timeout=wait) as response:
            length = _announced_length(url, response, max_bytes)
            data = bytearray()
            while time.monotonic() < deadline:
                chunk = response.read1(min(CHUNK, max_bytes + 1 - len(data)))  # never more than the cap + 1
                if not chunk and len(data) < (length or 0):  # subtle: read1 does not check this itself
                    raise FetchError(f"{url} broke off after {len(data):,} of the {length:,} bytes it announced "
                                     "(Content-Length)")
                if not chunk:
                    return bytes(data)
                data += chunk
                if len(data) > max_bytes:
                    raise FetchError(f"{url} sent more than the {max_bytes:,}-byte limit; set {MAX_BYTES_ENV} "
                                     "or pass max_bytes to allow more")
            raise FetchError(too_slow)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:  # any status but 2xx (urllib follows the redirects itself)
        e.close()
        raise FetchError(f"{url} answered HTTP {e.code} ({e.reason}); expected 200 with the file's bytes") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # no such host, refused, cut short, garbled...
        reason = getattr(e, "reason", e)  # urllib wraps the socket's error in a URLError
        if isinstance(reason, TimeoutError):
            raise FetchError(f"{too_slow} (nothing came for {wait:g} s)") from None
        detail = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
        raise FetchError(f"could not download {url}: {detail}") from None


def _announced_length(url, response, max_bytes):
    """The body's Content-Length (None if not given); refuses a web page, or a length over the cap."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() == "text/html":
        raise FetchError(f"{url} is a web page (Content-Type {content_type}), not an image; use the address of "
                         "the image itself (in a browser: right-click the image, Copy image address)")
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"{url} is {int(length):,} bytes (its Content-Length), more than the {max_bytes:,}-byte "
                         f"limit; set {MAX_BYTES_ENV} or pass max_bytes to allow more")
    return int(length) if length.isdigit() else None


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    # subtle: urllib follows a redirect to ftp:// too; only http(s) is fetched, wherever the URL came from
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise FetchError(f"{req.full_url} redirects to {newurl!r}, which is not an http:// or https:// URL; "
                             "only those are downloaded")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
