"""Fetch: the bytes at an http(s) URL, within a deadline and a size cap (images given by URL).

    data = fetch_url("https://example.com/cat.jpg")      # bytes, or FetchError naming the URL

(A first version: the network owner of issue 11 hardens it. Interface: is_url, fetch_url, FetchError.)
"""

import urllib.request

# Defaults, settable per call.
DEFAULT_TIMEOUT_S = 60.0  # the whole download, not each read
DEFAULT_MAX_BYTES = 50_000_000  # 50 MB: larger than any photo worth scoring


class FetchError(OSError):
    """A URL that could not be fetched within the limits; the message names the URL."""


def is_url(s):
    """True for a string that starts with http:// or https:// (in any case, as URLs allow)."""
    return isinstance(s, str) and s[:8].lower().startswith(("http://", "https://"))


def fetch_url(url, *, timeout_s=None, max_bytes=None):
    """The body at `url` as bytes; FetchError (an OSError) naming the URL on any failure."""
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
    except OSError as e:
        raise FetchError(f"could not download {url}: {e}") from None
    if len(data) > max_bytes:
        raise FetchError(f"{url} is larger than the {max_bytes}-byte limit")
    return data
