"""fetch.fetch_url against a hostile local server: real sockets on 127.0.0.1, answers made to order.

Each test builds the server's answer itself (tests/local_server.py) and passes small limits, so that a
server that drips, stalls or never stops costs a second or two, and checks the FetchError names the
URL, the limit and how to raise it.
"""

import time

import pytest

from local_server import reply, serve
from minibridge.fetch import MAX_BYTES_ENV, TIMEOUT_ENV, FetchError, fetch_url, is_url

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # 1,032 bytes; fetch_url does not decode them

# Wall-clock bounds are generous (this machine is shared and slow); the failures they catch are a
# download that hangs for minutes, not one that is a second late.
SLACK_S = 4.0


def drip(handler):
    """Announces 1,000 bytes, then sends one every 0.2 s: each read is quick, the whole takes 200 s."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        if handler.server.stop.wait(0.2):
            return


def drip_headers(handler):
    """A status line, then a header one byte every 0.2 s (200 s in all): the body never begins."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(1000):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        if handler.server.stop.wait(0.2):
            return


def stall(handler):
    """Headers, then nothing at all until the test ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.flush()
    handler.server.stop.wait(30)


def endless(handler, length=None):
    """A body that never ends (no Content-Length, or one that lies as `length`)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.send_header("Connection", "close")
    handler.end_headers()
    chunk = b"x" * 65536
    while not handler.server.stop.is_set():
        handler.wfile.write(chunk)


def cut(handler):
    """Announces 1,000 bytes, sends 10 and hangs up."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"x" * 10)
    handler.close_connection = True


def garbage(handler):
    handler.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
    handler.close_connection = True


def redirect_to(location):
    def route(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return route


ROUTES = {
    "/cat.png": reply(PNG, "image/png"),
    "/drip.png": drip,
    "/stall.png": stall,
    "/drip-headers.png": drip_headers,
    "/endless.png": endless,
    "/huge.png": lambda handler: endless(handler, length=10**12),
    "/cut.png": cut,
    "/garbage.png": garbage,
    "/page.html": reply(b"<html><body><img src='cat.png'></body></html>", "text/html; charset=utf-8"),
    "/gone.png": reply(b"not found", "text/plain", status=404),
    "/broken.png": reply(b"oops", "text/plain", status=500),
    "/moved.png": redirect_to("/cat.png"),
    "/to-ftp.png": redirect_to("ftp://127.0.0.1/cat.png"),
}


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(MAX_BYTES_ENV, raising=False)
    with serve(ROUTES) as server:
        yield server


def fails(url, **limits):
    """(message, seconds) of the FetchError that fetch_url(url, **limits) must raise."""
    start = time.monotonic()
    with pytest.raises(FetchError) as e:
        fetch_url(url, **limits)
    return str(e.value), time.monotonic() - start


# ---- what is a URL ------------------------------------------------------------------------------


def test_is_url_in_any_case_and_only_http():
    assert is_url("http://example.com/cat.jpg") and is_url("https://example.com/cat.jpg")
    assert is_url("HTTP://EXAMPLE.COM/CAT.JPG") and is_url("Https://example.com/cat.jpg")
    for not_url in ("ftp://example.com/cat.jpg", "file:///etc/passwd", "cat.jpg", "http:/x", "", None, b"http://x"):
        assert not is_url(not_url), not_url


def test_a_good_image_and_an_upper_case_scheme(server):
    assert fetch_url(server.url + "/cat.png") == PNG
    assert fetch_url(server.url.replace("http://", "HTTP://") + "/cat.png") == PNG
    assert fetch_url(server.url + "/moved.png") == PNG  # an http redirect is followed


def test_other_schemes_are_not_fetched(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not send")
    for url in (secret.as_uri(), "ftp://127.0.0.1/cat.png", "gopher://127.0.0.1/"):
        message, _ = fails(url)
        assert url in message and "not an http:// or https:// URL" in message
    message, _ = fails(server.url + "/to-ftp.png")  # nor through a redirect
    assert f"{server.url}/to-ftp.png redirects to 'ftp://127.0.0.1/cat.png'" in message
    assert [path for _, path, _ in server.requests] == ["/to-ftp.png"]


# ---- the deadline -------------------------------------------------------------------------------


def test_a_dripping_server_is_cut_off_at_the_deadline(server):
    # subtle: every read brings a byte within 0.2 s, so a per-read timeout alone waits 200 s
    url = server.url + "/drip.png"
    message, seconds = fails(url, timeout_s=1)
    assert seconds < 1 + SLACK_S
    assert f"Downloading {url} took longer than the 1 s limit" in message and TIMEOUT_ENV in message


def test_headers_dripped_byte_by_byte_are_cut_off_at_the_deadline(server):
    # subtle: the headers are read inside urllib, before any clock of ours can look (12 s for 1 s before)
    url = server.url + "/drip-headers.png"
    message, seconds = fails(url, timeout_s=1)
    assert seconds < 1 + SLACK_S
    assert f"Downloading {url} took longer than the 1 s limit" in message


def test_the_deadline_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    message, seconds = fails(server.url + "/drip.png")
    assert seconds < 0.5 + SLACK_S and "0.5 s limit" in message and TIMEOUT_ENV in message
    assert fetch_url(server.url + "/cat.png", timeout_s=30) == PNG  # the argument overrides it


def test_a_stalled_server_is_cut_off(server):
    url = server.url + "/stall.png"
    message, seconds = fails(url, timeout_s=1)
    assert seconds < 1 + SLACK_S
    assert f"Downloading {url} took longer than the 1 s limit" in message and "nothing came for 1 s" in message


# ---- the size cap -------------------------------------------------------------------------------


def test_an_endless_body_is_cut_off_at_the_cap(server):
    url = server.url + "/endless.png"
    message, seconds = fails(url, max_bytes=100_000)
    assert seconds < SLACK_S
    assert f"{url} sent more than the 100,000-byte limit" in message and MAX_BYTES_ENV in message


def test_a_large_content_length_is_refused_before_reading(server):
    url = server.url + "/huge.png"
    message, _ = fails(url, max_bytes=100_000)
    assert f"{url} is 1,000,000,000,000 bytes (its Content-Length), more than the 100,000-byte limit" in message
    assert MAX_BYTES_ENV in message


def test_the_cap_comes_from_the_environment(server, monkeypatch):
    url = server.url + "/cat.png"
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")  # the image is 1,032 bytes
    message, _ = fails(url)
    assert url in message and "1,000-byte limit" in message and MAX_BYTES_ENV in message
    assert fetch_url(url, max_bytes=len(PNG)) == PNG  # the argument overrides it; the cap itself is allowed


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan"])
def test_a_bad_limit_in_the_environment_names_the_variable(server, monkeypatch, value):
    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}.* must be a positive number, got"):
        fetch_url(server.url + "/cat.png")


# ---- answers that are not an image -------------------------------------------------------------


def test_a_web_page_is_not_an_image(server):
    url = server.url + "/page.html"
    message, _ = fails(url)
    assert f"{url} is a web page (Content-Type text/html; charset=utf-8), not an image" in message


@pytest.mark.parametrize("path, status", [("/gone.png", "HTTP 404 (Not Found)"),
                                          ("/broken.png", "HTTP 500 (Internal Server Error)")])
def test_an_error_status_names_it_and_the_url(server, path, status):
    message, _ = fails(server.url + path)
    assert f"{server.url}{path} answered {status}" in message


def test_a_broken_answer_names_the_url(server):
    message, _ = fails(server.url + "/cut.png")
    assert f"{server.url}/cut.png broke off after 10 of the 1,000 bytes it announced" in message
    message, _ = fails(server.url + "/garbage.png")
    assert f"could not download {server.url}/garbage.png: BadStatusLine" in message


def test_no_server_names_the_url():
    with serve({}) as gone:
        url = gone.url + "/cat.png"
    message, seconds = fails(url, timeout_s=2)  # the port is closed now: refused at once
    assert f"could not download {url}" in message and "Connection refused" in message
    assert seconds < SLACK_S
