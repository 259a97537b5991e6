"""hub.resolve against a fake Hub: every huggingface_hub call it makes is replaced, nothing goes online.

What is real here: the folder layout, the cache rules, the revision choice and the error messages.
What is faked: huggingface_hub.snapshot_download and HfApi (list_repo_files, get_repo_discussions),
modelled on what the real ones do (copying the allowed files into local_dir, raising its error types).
"""

import fnmatch
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from minibridge import hub
from minibridge.hub import CONVERSION_BOT, HubError, resolve

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
            get_repo_discussions = staticmethod(fake.get_repo_discussions)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)

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
