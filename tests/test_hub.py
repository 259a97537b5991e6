"""hub.resolve against a fake Hub: every huggingface_hub call it makes is replaced, nothing goes online.

What is real here: the folder layout, the cache rules, the revision choice and the error messages.
What is faked: huggingface_hub.snapshot_download and HfApi (list_repo_files, list_repo_tree,
get_repo_discussions), modelled on what the real ones do (copying the allowed files into local_dir,
raising its error types), and the name lookup of the Hub's host (it resolves).

The network's failures are played for real at the end of this file: a local HTTP server stands in for
the Hub (HF_ENDPOINT) and the real huggingface_hub talks to it.
"""

import fnmatch
import hashlib
import json
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import huggingface_hub
import pytest
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from local_server import reply, serve
from minibridge import hub
from minibridge.hub import CONVERSION_BOT, MAX_BYTES_ENV, TIMEOUT_ENV, HubError, resolve

BASE = "BridgeTower/bridgetower-base-itm-mlm"
SMALL = {"config.json": b"{}", "vocab.json": b"{}", "merges.txt": b"#", "tokenizer_config.json": b"{}",
         "special_tokens_map.json": b"{}", "preprocessor_config.json": b"{}"}
EXTRA = {"README.md": b"# card", ".gitattributes": b"*.bin filter=lfs"}  # never wanted


def _error(cls, status, message):
    # huggingface_hub's HTTP errors want a response; a stand-in with what their constructor reads
    return cls(message, response=SimpleNamespace(status_code=status, headers={}, request=None))


class FakeHub:
    """The Hub as data: {repo: {revision: {file: bytes}}} and open/closed PRs; records every call."""

    def __init__(self):
        self.repos = {}
        self.discussions = {}  # repo -> [SimpleNamespace(num, title, author, status)]
        self.discussions_error = None  # raised by get_repo_discussions when set
        self.down = False  # True: every call fails as with no network
        self.sizes = {}  # file name -> the size list_repo_tree reports, where not len(bytes)
        self.calls = []

    def add(self, repo_id, revisions):
        self.repos[repo_id] = revisions

    def add_pr(self, repo_id, num, author=CONVERSION_BOT, title="Adding `safetensors` variant of this model",
               status="open"):
        self.discussions.setdefault(repo_id, []).append(SimpleNamespace(num=num, title=title, author=author,
                                                                        status=status, is_pull_request=True))

    def _files(self, repo_id, revision):
        if self.down:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        if repo_id not in self.repos:
            raise _error(RepositoryNotFoundError, 404, f"404 Client Error. Repository Not Found for url: {repo_id}")
        if revision not in self.repos[repo_id]:
            raise _error(RevisionNotFoundError, 404, f"404 Client Error. Revision Not Found: {revision}")
        return self.repos[repo_id][revision]

    # -- the replaced huggingface_hub functions --

    def snapshot_download(self, repo_id, *, revision=None, local_dir=None, allow_patterns=None, **kwargs):
        self.calls.append(("snapshot_download", repo_id, revision))
        files = self._files(repo_id, revision or "main")
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (Path(local_dir) / name).write_bytes(data)
        return str(local_dir)

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        self.calls.append(("list_repo_files", repo_id, revision))
        return list(self._files(repo_id, revision or "main"))

    def list_repo_tree(self, repo_id, *, revision=None, recursive=False, **kwargs):
        self.calls.append(("list_repo_tree", repo_id, revision))
        return iter([RepoFile(path=name, size=self.sizes.get(name, len(data)), oid="0" * 40)
                     for name, data in self._files(repo_id, revision or "main").items()])

    def get_repo_discussions(self, repo_id, *, discussion_type=None, discussion_status=None, **kwargs):
        self.calls.append(("get_repo_discussions", repo_id, None))
        if self.down:
            raise ConnectionError("Failed to resolve 'huggingface.co'")
        if self.discussions_error is not None:
            raise self.discussions_error
        assert (discussion_type, discussion_status) == ("pull_request", "open"), "ask the Hub for open PRs only"
        return iter([d for d in self.discussions.get(repo_id, []) if d.status == "open"])

    def install(self, monkeypatch):
        fake = self

        class FakeHfApi:
            def __init__(self, *args, **kwargs):
                pass

            list_repo_files = staticmethod(fake.list_repo_files)
            list_repo_tree = staticmethod(fake.list_repo_tree)
            get_repo_discussions = staticmethod(fake.get_repo_discussions)

        real_getaddrinfo = socket.getaddrinfo

        def getaddrinfo(host, *args, **kwargs):  # the fake Hub's name resolves (offline too); others as ever
            if host == urlsplit(huggingface_hub.constants.ENDPOINT).hostname:
                fake.calls.append(("getaddrinfo", host, None))
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))]
            return real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def calls_to(self, name):
        return [c for c in self.calls if c[0] == name]


def official(fake, repo_id=BASE, pr="refs/pr/4"):
    """An official repo as published: only pytorch_model.bin on main, model.safetensors on the bot's PR."""
    main = {**SMALL, **EXTRA, "pytorch_model.bin": b"bin"}
    revisions = {"main": main}
    if pr is not None:
        revisions[pr] = {**main, "config.json": b'{"stale": 1}', "model.safetensors": b"safetensors-from-pr"}
    fake.add(repo_id, revisions)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """MINIBRIDGE_HOME in tmp_path, HOME too (so ~/.cache is never the real one), online mode."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("MINIBRIDGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture
def fake(monkeypatch, home):
    fake = FakeHub()
    fake.install(monkeypatch)
    return fake


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file())


# ---- local folders --------------------------------------------------------------------------------


def test_local_folder_is_returned_as_is(fake, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert resolve(folder) == folder
    assert resolve(str(folder), revision="anything") == folder
    # a relative folder that reads like owner/name is still a folder: the disk wins over the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights" / "mine").mkdir(parents=True)
    assert resolve("weights/mine") == Path("weights/mine")
    assert fake.calls == []


def test_missing_local_folder_says_so(fake, tmp_path):
    with pytest.raises(HubError, match="There is no folder '.*nowhere'"):
        resolve(str(tmp_path / "nowhere"))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(HubError, match="is a file"):
        resolve(tmp_path / "model.safetensors")
    assert fake.calls == []


# ---- downloading and the cache --------------------------------------------------------------------


def test_download_goes_to_documented_place(fake, home, capsys):
    official(fake)
    folder = resolve(BASE)
    assert folder == home / "BridgeTower--bridgetower-base-itm-mlm" / "main"
    # config and tokenizer from main, only the weights from the PR; no .bin, no README
    assert names(folder) == sorted([*SMALL, "model.safetensors"])
    assert (folder / "config.json").read_bytes() == b"{}"
    assert (folder / "model.safetensors").read_bytes() == b"safetensors-from-pr"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refs/pr/4" in err and str(folder) in err


def test_home_defaults_and_cache_dir_overrides(fake, tmp_path, monkeypatch):
    import minibridge.hub as hub

    official(fake)
    monkeypatch.delenv("MINIBRIDGE_HOME")
    # From a source checkout: the design card's weights/ folder (git-ignored).
    assert hub.default_home() == Path(hub.__file__).resolve().parents[1] / "weights"
    # An installed package (no weights/README.md beside it): the user's cache.
    monkeypatch.setattr(hub, "__file__", str(tmp_path / "site-packages" / "minibridge" / "hub.py"))
    user_cache = tmp_path / "user" / ".cache" / "minibridge"
    assert resolve(BASE) == user_cache / "BridgeTower--bridgetower-base-itm-mlm" / "main"
    monkeypatch.setenv("MINIBRIDGE_HOME", str(tmp_path / "env"))
    assert hub.default_home() == tmp_path / "env"
    assert resolve(BASE, cache_dir=tmp_path / "arg").parent.parent == tmp_path / "arg"


def test_second_call_uses_the_cache_without_network(fake):
    official(fake)
    first = resolve(BASE)
    n = len(fake.calls)
    fake.down = True  # any call to the Hub now fails
    assert resolve(BASE) == first
    assert len(fake.calls) == n


def test_explicit_revision_is_its_own_folder_and_skips_discovery(fake, home):
    official(fake)
    folder = resolve(BASE, revision="refs/pr/4")
    assert folder == home / "BridgeTower--bridgetower-base-itm-mlm" / "refs--pr--4"
    assert "model.safetensors" in names(folder) and "pytorch_model.bin" not in names(folder)
    assert fake.calls_to("get_repo_discussions") == []
    # main asked for by name: what main holds, the .bin
    assert "pytorch_model.bin" in names(resolve(BASE, revision="main", cache_dir=home / "other"))


def test_weights_false_fetches_only_the_small_files(fake):
    official(fake)
    folder = resolve(BASE, weights=False, files=("tokenizer_config.json", "vocab.json"))
    assert names(folder) == ["config.json", "tokenizer_config.json", "vocab.json"]
    assert fake.calls_to("list_repo_files") == []
    fake.down = True
    assert resolve(BASE, weights=False) == folder  # config.json is there: cached


def test_sharded_safetensors_and_partial_shards(fake):
    index = b'{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    fake.add("me/sharded", {"main": {**SMALL, "model.safetensors.index.json": index, "pytorch_model.bin": b"x",
                                      "model-00001-of-00002.safetensors": b"1",
                                      "model-00002-of-00002.safetensors": b"2"}})
    folder = resolve("me/sharded")
    assert names(folder) == sorted([*SMALL, "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                    "model-00002-of-00002.safetensors"])
    assert fake.calls_to("get_repo_discussions") == []  # main has safetensors: nothing to discover
    (folder / "model-00002-of-00002.safetensors").unlink()  # an interrupted download
    n = len(fake.calls_to("snapshot_download"))
    resolve("me/sharded")
    assert len(fake.calls_to("snapshot_download")) == n + 1 and "model-00002-of-00002.safetensors" in names(folder)


# ---- offline --------------------------------------------------------------------------------------


def test_hf_hub_offline_uses_the_cache(fake, monkeypatch):
    official(fake)
    folder = resolve(BASE)
    n = len(fake.calls)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(BASE) == folder
    assert len(fake.calls) == n


def test_hf_hub_offline_without_cache_says_what_to_do(fake, home, monkeypatch):
    official(fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError) as e:
        resolve(BASE)
    msg = str(e.value)
    folder = home / "BridgeTower--bridgetower-base-itm-mlm" / "main"
    assert "HF_HUB_OFFLINE" in msg and str(folder) in msg and "config.json" in msg
    assert "--model path/to/folder" in msg and 'from_pretrained("path/to/folder")' in msg
    assert "\n" not in msg  # one paragraph
    assert fake.calls == []


def test_no_network_and_nothing_cached_says_what_to_do(fake, home):
    official(fake)
    fake.down = True
    with pytest.raises(HubError) as e:
        resolve(BASE)
    msg = str(e.value)
    assert "cannot be reached" in msg and "ConnectionError" in msg
    assert str(home / "BridgeTower--bridgetower-base-itm-mlm" / "main") in msg
    assert "--model path/to/folder" in msg and 'from_pretrained("path/to/folder")' in msg and "\n" not in msg


def test_offline_with_config_but_no_weights_names_what_is_missing(fake, monkeypatch):
    official(fake)
    resolve(BASE, weights=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match=r"lacks model weights"):
        resolve(BASE)


# ---- which revision holds the safetensors ----------------------------------------------------------


def test_revision_discovered_from_the_bots_open_pr(fake, capsys):
    repo = "someone/bridgetower-copy"  # not in the fallback table: only the Hub can tell
    official(fake, repo, pr="refs/pr/7")
    fake.add_pr(repo, 3, title="Adding `safetensors` variant of this model", status="closed")
    fake.add_pr(repo, 7)
    fake.add_pr(repo, 9, author="mallory", title="Adding safetensors (trust me)")  # not the bot: ignored
    fake.add_pr(repo, 10, title="Update README")  # the bot, but not a conversion
    folder = resolve(repo)
    assert (folder / "model.safetensors").read_bytes() == b"safetensors-from-pr"
    assert ("snapshot_download", repo, "refs/pr/7") in fake.calls
    assert "refs/pr/7" in capsys.readouterr().err


def test_the_hub_wins_over_the_table(fake):
    official(fake, pr="refs/pr/5")
    fake.add_pr(BASE, 5)
    resolve(BASE)
    assert ("snapshot_download", BASE, "refs/pr/5") in fake.calls


@pytest.mark.parametrize("repo_id, pr", [
    ("BridgeTower/bridgetower-base", "refs/pr/2"),
    ("BridgeTower/bridgetower-base-itm-mlm", "refs/pr/4"),
    ("BridgeTower/bridgetower-large-itm-mlm", "refs/pr/1"),
    ("BridgeTower/bridgetower-large-itm-mlm-itc", "refs/pr/1"),
    ("BridgeTower/bridgetower-large-itm-mlm-gaudi", "refs/pr/1"),
])
@pytest.mark.parametrize("failure", ["forbidden", "no network"])
def test_fallback_table_when_discussions_cannot_be_listed(fake, repo_id, pr, failure):
    official(fake, repo_id, pr=pr)
    fake.discussions_error = (_error(HfHubHTTPError, 403, "403 Discussions are disabled") if failure == "forbidden"
                              else ConnectionError("Read timed out"))
    folder = resolve(repo_id)
    assert (folder / "model.safetensors").read_bytes() == b"safetensors-from-pr"
    assert ("snapshot_download", repo_id, pr) in fake.calls


def test_official_repo_without_pr_gets_the_bin(fake, capsys):
    official(fake, pr=None)  # no PR on the Hub, and the table's refs/pr/4 does not exist
    folder = resolve(BASE)
    assert "pytorch_model.bin" in names(folder) and "model.safetensors" not in names(folder)
    assert ("list_repo_files", BASE, "refs/pr/4") in fake.calls  # the table was tried
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "revision main" in err


def test_main_with_safetensors_needs_no_discovery(fake):
    fake.add("me/modern", {"main": {**SMALL, "model.safetensors": b"s", "pytorch_model.bin": b"b"}})
    folder = resolve("me/modern")
    assert "model.safetensors" in names(folder) and "pytorch_model.bin" not in names(folder)
    assert fake.calls_to("get_repo_discussions") == []


# ---- errors a person can act on ----------------------------------------------------------------------


def test_unknown_repo_says_so(fake):
    with pytest.raises(HubError, match="'nobody/nothing' is neither a local folder nor a model repo") as e:
        resolve("nobody/nothing")
    assert "\n" not in str(e.value)


def test_unknown_revision_says_so(fake):
    official(fake)
    with pytest.raises(HubError, match=f"{BASE} has no revision 'v9'"):
        resolve(BASE, revision="v9")


def test_not_a_path_nor_a_repo_id(fake):
    with pytest.raises(HubError, match="not a Hub repo id either"):
        resolve("a/b/c")


def test_repo_without_weights_lists_what_it_has(fake):
    fake.add("me/empty", {"main": {**SMALL, "README.md": b""}})
    with pytest.raises(HubError, match=r"holds no weights minibridge can read .* README\.md"):
        resolve("me/empty")


def test_repo_without_config_is_not_a_checkpoint(fake):
    fake.add("me/raw", {"main": {"model.safetensors": b"s"}})
    with pytest.raises(HubError, match="has no config.json"):
        resolve("me/raw")


def test_cache_folder_layout():
    assert hub.cache_folder("a/b", None, "/c") == Path("/c/a--b/main")
    assert hub.cache_folder("a/b", "refs/pr/1", "/c") == Path("/c/a--b/refs--pr--1")


# ---- HF_HUB_OFFLINE and the newest PR -------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "yes", "on"])
def test_hf_hub_offline_is_honoured_in_every_spelling(fake, monkeypatch, value):
    official(fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(HubError, match=f"Cannot load {BASE}: .*HF_HUB_OFFLINE is set, so nothing is downloaded"):
        resolve(BASE)
    assert fake.calls == []  # not even the name lookup


@pytest.mark.parametrize("value", ["0", "false", "False", "no", ""])
def test_hf_hub_offline_false_downloads(fake, monkeypatch, value):
    official(fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert (resolve(BASE) / "model.safetensors").read_bytes() == b"safetensors-from-pr"


def test_of_several_open_conversion_prs_the_newest_is_taken(fake):
    repo = "someone/bridgetower-copy"
    official(fake, repo, pr=None)
    for num in (2, 5, 3):  # listed neither oldest- nor newest-first
        fake.repos[repo][f"refs/pr/{num}"] = {**SMALL, "model.safetensors": f"safetensors-from-pr-{num}".encode()}
        fake.add_pr(repo, num)
    folder = resolve(repo)
    assert (folder / "model.safetensors").read_bytes() == b"safetensors-from-pr-5"
    weights_from = [revision for _, _, revision in fake.calls_to("snapshot_download") if revision != "main"]
    assert weights_from == ["refs/pr/5"]


# ---- the size cap, from the Hub's listing ---------------------------------------------------------


def test_a_download_over_the_cap_is_refused_before_it_starts(fake, home, monkeypatch):
    official(fake)
    small = sum(len(data) for data in SMALL.values())
    folder = hub.cache_folder(BASE)
    fake.sizes["model.safetensors"] = 25_000_000_000  # as listed; nothing that large is served here
    with pytest.raises(HubError) as e:
        resolve(BASE)
    msg = str(e.value)
    assert f"The Hub repo {BASE} lists {25_000_000_000 + small:,} bytes" in msg
    assert "model.safetensors 25,000,000,000" in msg and "20,000,000,000-byte limit" in msg and MAX_BYTES_ENV in msg
    assert fake.calls_to("snapshot_download") == [] and not folder.exists()
    fake.sizes["model.safetensors"] = 3_500_000_000  # the large checkpoints' weights: within the default
    monkeypatch.setenv(MAX_BYTES_ENV, "1e9")
    with pytest.raises(HubError, match=f"{BASE} lists .* more than the 1,000,000,000-byte limit; set {MAX_BYTES_ENV}"):
        resolve(BASE)
    monkeypatch.delenv(MAX_BYTES_ENV)
    assert (resolve(BASE) / "model.safetensors").read_bytes() == b"safetensors-from-pr"


@pytest.mark.parametrize("env", [TIMEOUT_ENV, MAX_BYTES_ENV])
def test_a_bad_limit_names_its_variable(fake, monkeypatch, env):
    official(fake)
    monkeypatch.setenv(env, "lots")
    with pytest.raises(ValueError, match=f"{env} must be a positive number, got 'lots'"):
        resolve(BASE)
    assert fake.calls == []


# ---- no network: the Hub's name does not resolve ------------------------------------------------

SLACK_S = 3.0  # generous bounds for a shared, slow machine: what they catch takes 24 s or forever


def no_proxy(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_an_unresolvable_hub_fails_at_once_and_quietly(home, monkeypatch, capfd):
    # the real huggingface_hub: were the name not looked up first, it would retry for ~24 s, warning each time
    no_proxy(monkeypatch)

    def getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    start = time.monotonic()
    with pytest.raises(HubError) as e:
        resolve(BASE)
    assert time.monotonic() - start < SLACK_S
    msg, host = str(e.value), urlsplit(huggingface_hub.constants.ENDPOINT).hostname
    assert msg.startswith(f"Cannot load {BASE}: it is not a local folder, the Hub's host {host} cannot be resolved "
                          "(gaierror: [Errno -2] Name or service not known)")
    assert str(hub.cache_folder(BASE)) in msg and "--model path/to/folder" in msg and "\n" not in msg
    assert capfd.readouterr().err == ""


def test_a_name_lookup_without_answer_is_cut_short(home, monkeypatch):
    no_proxy(monkeypatch)
    released = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: released.wait(30))
    monkeypatch.setattr(hub, "DNS_TIMEOUT_S", 0.2)
    start = time.monotonic()
    try:
        with pytest.raises(HubError, match=rf"{BASE}: .* cannot be resolved \(TimeoutError: no answer in 0.2 s\)"):
            resolve(BASE)
    finally:
        released.set()
    assert time.monotonic() - start < SLACK_S


def test_behind_a_proxy_the_name_is_not_looked_up(fake, monkeypatch):
    official(fake)
    no_proxy(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # it resolves names, not our DNS
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: pytest.fail("looked the Hub up"))
    assert (resolve(BASE) / "model.safetensors").read_bytes() == b"safetensors-from-pr"


# ---- a local server as the Hub: the real huggingface_hub against hostile answers ------------------

REPO, COMMIT = "me/repo", "0123456789abcdef0123456789abcdef01234567"


def hub_file(data, body=None):
    """A file as the Hub serves it (size, etag and commit in the headers); `body(handler, data)`, if
    given, writes the rest of a GET's headers and a hostile body instead of an honest one."""
    def route(handler):
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        if body is None or handler.command == "HEAD":
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        else:
            body(handler, data)
    return route


def cut_halfway(handler, data):
    """The whole length announced, half of it sent, the connection closed: on every request."""
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data[:len(data) // 2])
    handler.close_connection = True


def endless(handler, data):
    """No length announced, and a body that does not end."""
    handler.send_header("Connection", "close")
    handler.end_headers()
    while not handler.server.stop.is_set():
        handler.wfile.write(b"x" * 65536)


def short(handler, data):
    """No length announced, and half the file."""
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data[:len(data) // 2])
    handler.close_connection = True


def redirect_to_itself(handler):
    handler.send_response(302)
    handler.send_header("Location", handler.path)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


@pytest.fixture
def local_hub(home, monkeypatch):
    """start(files, hostile={name: body}) serves REPO at COMMIT as the Hub does, at HF_ENDPOINT."""
    from huggingface_hub import constants

    no_proxy(monkeypatch)
    with ExitStack() as servers:
        def start(files, hostile=(), routes=()):
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in files.items()]
            info = {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
            server = servers.enter_context(serve({
                f"/api/models/{REPO}/revision/main": reply(json.dumps(info).encode(), "application/json"),
                f"/api/models/{REPO}/tree/*": reply(json.dumps(tree).encode(), "application/json"),
                **{f"/{REPO}/resolve/{COMMIT}/{name}": hub_file(data, dict(hostile).get(name))
                   for name, data in files.items()},
                **dict(routes),
            }))
            monkeypatch.setattr(constants, "ENDPOINT", server.url)  # as HF_ENDPOINT does at import
            monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                                server.url + "/{repo_id}/resolve/{revision}/{filename}")
            return server
        yield start


WEIGHTS = bytes(range(256)) * 256  # 64 KB


def hooks():
    from huggingface_hub import get_session

    return {event: list(functions) for event, functions in get_session().event_hooks.items()}


def test_a_local_hub_serves_a_checkpoint(local_hub):
    local_hub({"config.json": b"{}", "model.safetensors": WEIGHTS})
    before = hooks()
    folder = resolve(REPO)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS and (folder / "config.json").read_bytes() == b"{}"
    assert hooks() == before  # the limits' hooks are gone after the download


def test_a_file_cut_on_every_request_stops_at_the_deadline(local_hub, monkeypatch):
    from huggingface_hub import constants

    # subtle: huggingface_hub retries for as long as each try brings a whole chunk; 8 KB chunks make
    # this 64 KB file behave like real weights of gigabytes with its 10 MB chunks (a retry loop forever)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 8192)
    server = local_hub({"config.json": b"{}", "model.safetensors": WEIGHTS}, hostile={"model.safetensors": cut_halfway})
    before = hooks()
    start = time.monotonic()
    with pytest.raises(HubError) as e:
        resolve(REPO, timeout_s=2)
    assert time.monotonic() - start < 2 + SLACK_S
    msg = str(e.value)
    assert msg.startswith(f"Stopped downloading {REPO} from the Hub: it took longer than the 2 s limit (at "
                          f"{server.url}/{REPO}/resolve/{COMMIT}/model.safetensors); set {TIMEOUT_ENV}")
    cuts = [path for method, path, _ in server.requests if method == "GET" and path.endswith("model.safetensors")]
    assert len(cuts) >= 2  # huggingface_hub did retry: the loop that had no end
    folder = hub.cache_folder(REPO)
    assert not [p for p in folder.rglob("*") if p.name.endswith(".safetensors")] and not hub.cached(REPO)
    assert hooks() == before


def test_an_endless_file_stops_at_the_cap(local_hub):
    server = local_hub({"config.json": b"{}", "model.safetensors": WEIGHTS}, hostile={"model.safetensors": endless})
    start = time.monotonic()
    with pytest.raises(HubError) as e:
        resolve(REPO, max_bytes=1_000_000)  # the listing says 64 KB: allowed at first
    assert time.monotonic() - start < SLACK_S
    assert str(e.value).startswith(f"Stopped downloading {REPO} from the Hub: it came to more than the 1,000,000-byte "
                                   f"limit (at {server.url}/{REPO}/resolve/{COMMIT}/model.safetensors); "
                                   f"set {MAX_BYTES_ENV}")
    assert not [p for p in hub.cache_folder(REPO).rglob("*") if p.name.endswith(".safetensors")]


def test_a_short_file_names_the_repo_and_the_file(local_hub):
    local_hub({"config.json": b"{}", "model.safetensors": WEIGHTS}, hostile={"model.safetensors": short})
    with pytest.raises(HubError) as e:
        resolve(REPO)
    msg = str(e.value)
    assert msg.startswith(f"Downloading {REPO} into {hub.cache_folder(REPO)} failed: ") and "model.safetensors" in msg
    assert not (hub.cache_folder(REPO) / "model.safetensors").exists()


def test_a_redirect_loop_names_the_repo_and_the_url(local_hub):
    server = local_hub({"config.json": b"{}"}, routes={f"/api/models/{REPO}/tree/*": redirect_to_itself})
    with pytest.raises(HubError) as e:
        resolve(REPO)
    msg = str(e.value)
    assert msg.startswith(f"Cannot load {REPO}: it is not a local folder, the Hugging Face Hub cannot be reached "
                          "(TooManyRedirects: ")
    assert f"(at {server.url}/api/models/{REPO}/tree/main" in msg
