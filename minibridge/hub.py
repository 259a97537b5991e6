"""Hub: a checkpoint name in, a local folder in the Hub layout out (config.json, weights, tokenizer files).

    folder = resolve("BridgeTower/bridgetower-base-itm-mlm")   # downloaded once, offline afterwards
    folder = resolve("weights/my-checkpoint")                   # a local folder is returned as is

Where downloads go: the `cache_dir` argument, else $MINIBRIDGE_HOME, else the project's `weights/`
folder when minibridge runs from a source checkout, else ~/.cache/minibridge (see `default_home`); inside it
one folder per repo and revision, <home>/<owner>--<name>/<revision>/ ("main" when no revision is given;
"refs/pr/4" is stored as "refs--pr--4"). A folder that already holds config.json and weights is used
without asking the Hub, so the second run works offline; HF_HUB_OFFLINE=1 forbids the network altogether.

The five official BridgeTower repos hold only pytorch_model.bin on main; their model.safetensors sits on
an open pull request by the Hub's conversion bot. With revision=None we look for that PR the way
transformers does and take the weights from it (config and tokenizer still come from main); failing
that, pytorch_model.bin is downloaded and convert.py turns it into model.safetensors without torch.

Limits of one download, settable per call (timeout_s=, max_bytes=) or by environment variable:
    MINIBRIDGE_HUB_TIMEOUT    seconds for the whole download, every file and retry (default 3600)
    MINIBRIDGE_HUB_MAX_BYTES  the most it may fetch (default 20_000_000_000: 20 GB, well above the
                              3.5 GB of weights of the large checkpoints)
    HF_HUB_DOWNLOAD_TIMEOUT   huggingface_hub's own: seconds one read may wait (default 10)
A download whose files, as the Hub lists them, exceed the cap is refused before it starts; the deadline
and the cap are checked again on every read, since huggingface_hub resumes a broken download for as
long as each try brings new bytes. A download stopped halfway never leaves a complete-looking file:
huggingface_hub writes each file under a temporary name and renames it once whole. Before anything
else the Hub's host name is looked up (for 5 s at most), so that no network fails at once, not after
half a minute of retries.
"""

import fnmatch
import os
import re
import socket
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from .fetch import limit

# Everything but the weights that any minibridge class reads: the model's config, the tokenizer's
# and the image processor's files. All small (a few MB together), so every download takes them all.
DEFAULT_FILES = ("config.json", "tokenizer.json", "vocab.json", "merges.txt", "preprocessor_config.json",
                 "special_tokens_map.json", "tokenizer_config.json")

# Weight files minibridge reads, safetensors preferred (memory-mapped, and loading runs no code).
SINGLE, INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
SHARDS = "model-*-of-*.safetensors"  # the shard names transformers writes beside an index

# The conversion bot's PRs as of our last look; used only when the Hub's PR list cannot be read.
CONVERSION_BOT = "SFconvertbot"
CONVERSION_PRS = {
    "BridgeTower/bridgetower-base": "refs/pr/2",
    "BridgeTower/bridgetower-base-itm-mlm": "refs/pr/4",
    "BridgeTower/bridgetower-large-itm-mlm": "refs/pr/1",
    "BridgeTower/bridgetower-large-itm-mlm-itc": "refs/pr/1",
    "BridgeTower/bridgetower-large-itm-mlm-gaudi": "refs/pr/1",
}

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name; "./x", "/x", "~/x", "a/b/c" are paths
_TRUE = {"1", "ON", "YES", "TRUE"}  # the values huggingface_hub accepts for its boolean variables

# Limits of one download (see the module docstring).
DEFAULT_TIMEOUT_S = 3600.0  # 3.5 GB in an hour needs 1 MB/s; a slower link sets MINIBRIDGE_HUB_TIMEOUT
DEFAULT_MAX_BYTES = 20_000_000_000  # 20 GB
TIMEOUT_ENV, MAX_BYTES_ENV = "MINIBRIDGE_HUB_TIMEOUT", "MINIBRIDGE_HUB_MAX_BYTES"
DNS_TIMEOUT_S = 5.0  # no answer from the name lookup in this long: no network


class HubError(Exception):
    """A checkpoint that cannot be found or fetched; the message says what to do about it."""


def resolve(name_or_path, revision=None, cache_dir=None, *, files=DEFAULT_FILES, weights=True,
            timeout_s=None, max_bytes=None):
    """Local folder of a checkpoint: a folder path as is, or a Hub repo id, downloaded on first use.

    name_or_path: a folder in the Hub layout, or "owner/name" on the Hugging Face Hub.
    revision: branch, tag, commit or "refs/pr/N"; None = main, with weights from the conversion PR
        where main has no safetensors (official BridgeTower repos).
    cache_dir: where downloads go; default `default_home()`.
    files: the non-weight files to fetch (those the repo lacks are skipped); weights: fetch weights too.
    timeout_s, max_bytes: limits of the download (default $MINIBRIDGE_HUB_TIMEOUT, $MINIBRIDGE_HUB_MAX_BYTES).
    Returns the folder (pathlib.Path); raises HubError with a message a person can act on.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HubError(f"{path} is a file; minibridge expects a folder in the Hugging Face layout "
                       "holding config.json and model.safetensors (or pytorch_model.bin).")
    repo_id = str(name_or_path)
    if not _REPO_ID.fullmatch(repo_id):
        raise HubError(f"There is no folder {repo_id!r}, and it is not a Hub repo id either (those read "
                       "owner/name, e.g. BridgeTower/bridgetower-base-itm-mlm).")
    folder = cache_folder(repo_id, revision, cache_dir)
    missing = _missing(folder, weights)
    if not missing:
        return folder  # cached: no network at all, so this works offline
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        raise HubError(_unreachable(repo_id, folder, missing, "HF_HUB_OFFLINE is set, so nothing is downloaded"))
    timeout_s = limit(timeout_s, TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    max_bytes = int(limit(max_bytes, MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    _check_host(repo_id, folder, missing)
    with _hub_errors(repo_id, revision, folder, missing), _limits(timeout_s, max_bytes):
        _download(repo_id, revision, folder, files, weights, max_bytes)
    missing = _missing(folder, weights)
    if missing:
        raise HubError(f"The Hub repo {repo_id} (revision {revision or 'main'}) has no {' and no '.join(missing)}; "
                       "is it a BridgeTower checkpoint in the transformers layout?")
    return folder


def default_home():
    """$MINIBRIDGE_HOME; else the checkout's weights/ folder (git-ignored); else ~/.cache/minibridge."""
    if os.environ.get("MINIBRIDGE_HOME"):
        return Path(os.environ["MINIBRIDGE_HOME"])
    checkout = Path(__file__).resolve().parents[1] / "weights"
    if (checkout / "README.md").is_file() and os.access(checkout, os.W_OK):
        return checkout  # a source checkout (pip install -e .): the design card's weights/ folder
    return Path.home() / ".cache" / "minibridge"


def cache_folder(repo_id, revision=None, cache_dir=None):
    """Where resolve keeps a Hub repo: <home>/<owner>--<name>/<revision>/ (see the module docstring)."""
    home = cache_dir or default_home()
    return Path(home).expanduser() / repo_id.replace("/", "--") / (revision or "main").replace("/", "--")


def cached(repo_id, revision=None, cache_dir=None):
    """True when `resolve` would find the Hub repo's config and weights on disk, without the network."""
    return not _missing(cache_folder(repo_id, revision, cache_dir), weights=True)


def _missing(folder, weights):
    """What a usable cached copy lacks: config.json, and the weights if they are wanted."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if weights and not _has_weights(folder):
        missing.append(f"model weights ({SINGLE} or {TORCH_BIN})")
    return missing


def _has_weights(folder):
    # A file present is a complete file: huggingface_hub downloads into a temporary name and renames,
    # and convert.py writes model.safetensors the same way. Only a shard set can be half there.
    if (folder / SINGLE).is_file() or (folder / TORCH_BIN).is_file():
        return True
    from .weights import read_index  # checks the index: each shard a plain file name in this folder

    try:
        shards = set(read_index(folder / INDEX).values())
    except (OSError, ValueError):  # no index, or one that loading would refuse (and name) anyway
        return False
    return all((folder / shard).is_file() for shard in shards)


# ---- downloading ---------------------------------------------------------------------------------


def _download(repo_id, revision, folder, files, weights, max_bytes):
    """Fetch the wanted files of one repo into `folder` (huggingface_hub shows its progress bars)."""
    small = list(dict.fromkeys(["config.json", *files]))  # config.json always: it marks a usable folder
    base = revision or "main"
    plan = [(base, small)]  # (revision, file patterns) to fetch
    if weights:
        weights_revision, patterns, why = _find_weights(repo_id, revision)
        _say(f"{repo_id}: weights from revision {weights_revision}{why}, into {folder}")
        if weights_revision == base:
            plan = [(base, small + patterns)]
        else:
            # As transformers does: config and tokenizer from main, only the weights from the PR, whose
            # branch may predate later fixes to the small files on main.
            plan.append((weights_revision, patterns))
    _check_size(repo_id, plan, max_bytes)
    for revision, patterns in plan:
        _snapshot(repo_id, revision, folder, patterns)


def _check_size(repo_id, plan, max_bytes):
    """Refuse, before the first byte, files that add up to more than max_bytes as the Hub lists them."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    sizes = {}
    for revision, patterns in plan:
        for entry in HfApi().list_repo_tree(repo_id, revision=revision, recursive=True):
            if isinstance(entry, RepoFile) and any(fnmatch.fnmatch(entry.path, p) for p in patterns):
                sizes[entry.path] = entry.size
    if sum(sizes.values()) > max_bytes:
        largest = ", ".join(f"{name} {sizes[name]:,}" for name in sorted(sizes, key=sizes.get, reverse=True)[:3])
        raise HubError(f"The Hub repo {repo_id} lists {sum(sizes.values()):,} bytes for the files to download "
                       f"(the largest: {largest}), more than the {max_bytes:,}-byte limit; set {MAX_BYTES_ENV} "
                       "or pass max_bytes to allow more.")


def _snapshot(repo_id, revision, folder, patterns):
    from huggingface_hub import snapshot_download

    # local_dir: real files in our folder (no symlinks into huggingface_hub's own cache), so the folder
    # can be copied or pointed at directly.
    snapshot_download(repo_id, revision=revision, local_dir=folder, allow_patterns=patterns)


def _find_weights(repo_id, revision):
    """(revision, patterns, why) of the weights to fetch: safetensors where the Hub has them, else the .bin."""
    names = _list_files(repo_id, revision or "main")
    safetensors, bin_ = _safetensors_patterns(names), [TORCH_BIN] if TORCH_BIN in names else []
    if revision is not None or safetensors:  # an explicit revision is taken as it is
        if not (safetensors or bin_):
            raise HubError(_no_weights(repo_id, revision or "main", names))
        return revision or "main", safetensors or bin_, ""
    pr = _conversion_pr(repo_id)
    if pr is not None:
        pr_safetensors = _safetensors_patterns(_list_files(repo_id, pr, missing_ok=True))
        if pr_safetensors:
            return pr, pr_safetensors, f" (the conversion bot's safetensors PR; main has only {TORCH_BIN})"
    if not bin_:
        raise HubError(_no_weights(repo_id, "main", names))
    return "main", bin_, f" ({TORCH_BIN}: no safetensors on the Hub; converted without torch on first load)"


def _safetensors_patterns(names):
    if SINGLE in names:
        return [SINGLE]
    if INDEX in names:
        return [INDEX, SHARDS]
    return []


def _list_files(repo_id, revision, missing_ok=False):
    """The repo's file names at `revision`; [] for a missing revision if missing_ok (a PR that is gone)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import RevisionNotFoundError

    try:
        return HfApi().list_repo_files(repo_id, revision=revision)
    except RevisionNotFoundError:
        if missing_ok:
            return []
        raise


def _conversion_pr(repo_id):
    """"refs/pr/N" of the conversion bot's open safetensors PR, from the Hub or the fallback table; or None."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    try:
        prs = [d.num for d in HfApi().get_repo_discussions(repo_id, discussion_type="pull_request",
                                                           discussion_status="open")
               # subtle: anyone may open a PR titled like the bot's; only the bot's are conversions of main
               if d.author == CONVERSION_BOT and "safetensors" in d.title.lower()]
    except (HfHubHTTPError, *_network_errors()):
        prs = []  # discussions disabled, rate-limited or unreachable: the table below still knows
    if prs:
        return f"refs/pr/{max(prs)}"  # several open: the newest converts the latest main
    return CONVERSION_PRS.get(repo_id)


def _say(message):
    print(f"minibridge: {message}", file=sys.stderr)


# ---- limits: a quick no-network answer, a deadline and a byte cap ---------------------------------


def _check_host(repo_id, folder, missing):
    """Fail at once, quietly, when the Hub's host name does not resolve (no network, or no DNS).

    Else huggingface_hub retries every request, with a warning each time, for some 24 s before it
    comes to the same conclusion.
    """
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)  # https://huggingface.co, or $HF_ENDPOINT
    proxies = urllib.request.getproxies()
    if (proxies.get(endpoint.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(endpoint.hostname):
        return  # subtle: behind a proxy the proxy looks names up; our own DNS may not know the Hub
    failures = []

    def look_up():
        try:
            socket.getaddrinfo(endpoint.hostname, None)
        except OSError as e:
            failures.append(e)

    thread = threading.Thread(target=look_up, daemon=True)  # getaddrinfo itself has no timeout
    thread.start()
    thread.join(DNS_TIMEOUT_S)
    if thread.is_alive():
        failures.append(TimeoutError(f"no answer in {DNS_TIMEOUT_S:g} s"))
    if failures:
        why = f"the Hub's host {endpoint.hostname} cannot be resolved ({_describe(failures[0])})"
        raise HubError(_unreachable(repo_id, folder, missing, why))


class _LimitReached(Exception):
    """A download past its deadline or its byte cap. Not an HTTP error, so huggingface_hub does not retry it."""


@contextmanager
def _limits(timeout_s, max_bytes):
    """Within the block, all of huggingface_hub's requests share one deadline and one byte cap.

    subtle: huggingface_hub's timeout is per read, and it resumes a broken download for as long as each
    try brings new bytes: a server that cuts the file on every request is retried forever. So hooks on
    its HTTP session check the clock and the bytes on every request and every read of a body, and
    shorten each wait to the time left. (A file kept on Xet storage is fetched by hf_xet, where installed,
    through its own client: only the requests around that transfer pass these hooks.)
    """
    from huggingface_hub import get_session

    session = get_session()
    # the session's own HTTP package: httpx under huggingface_hub 1.x, its fork httpx2 under 2.x
    httpx = sys.modules[type(session).__module__.partition(".")[0]]
    deadline, received = time.monotonic() + timeout_s, 0

    def check(url, more=0):
        if time.monotonic() > deadline:
            raise _LimitReached(f"it took longer than the {timeout_s:g} s limit (at {url}); set {TIMEOUT_ENV} "
                                "(seconds) or pass timeout_s to allow longer")
        if received + more > max_bytes:
            raise _LimitReached(f"it came to more than the {max_bytes:,}-byte limit (at {url}); set {MAX_BYTES_ENV} "
                                "or pass max_bytes to allow more")

    class CheckedBody(httpx.SyncByteStream):
        def __init__(self, body, url):
            self.body, self.url = body, url

        def __iter__(self):
            nonlocal received
            for data in self.body:  # each piece as it comes from the network
                received += len(data)
                check(self.url)
                yield data

        def close(self):
            self.body.close()

    def on_request(request):
        check(request.url)
        left = deadline - time.monotonic()
        waits = request.extensions.get("timeout") or dict.fromkeys(("connect", "read", "write", "pool"))
        request.extensions["timeout"] = {step: left if s is None else min(s, left) for step, s in waits.items()}

    def on_response(response):
        length = response.headers.get("Content-Length", "")
        if response.request.method != "HEAD" and length.isdigit():  # refuse a file too large before its body
            check(response.request.url, int(length))
        response.stream = CheckedBody(response.stream, response.request.url)

    session.event_hooks["request"].append(on_request)
    session.event_hooks["response"].append(on_response)
    try:
        yield
    finally:
        session.event_hooks["request"].remove(on_request)
        session.event_hooks["response"].remove(on_response)


# ---- errors a person can act on ------------------------------------------------------------------


@contextmanager
def _hub_errors(repo_id, revision, folder, missing):
    """Turn huggingface_hub's exceptions into one-paragraph HubErrors."""
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    try:
        yield
    except GatedRepoError:  # subtle: a subclass of RepositoryNotFoundError, so it must come first
        raise HubError(f"The Hub repo {repo_id} is gated: accept its terms on huggingface.co/{repo_id} and "
                       "log in (`hf auth login`), or pass a local folder that holds the checkpoint.") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id!r} is neither a local folder nor a model repo on the Hugging Face Hub (or the "
                       "repo is private and you are not logged in). Check the spelling, e.g. "
                       "BridgeTower/bridgetower-base-itm-mlm, or pass the path of a folder holding config.json "
                       "and model.safetensors.") from None
    except RevisionNotFoundError:
        raise HubError(f"The Hub repo {repo_id} has no revision {revision!r} (a branch, tag, commit or "
                       "refs/pr/N); leave the revision unset to use main.") from None
    except _LimitReached as e:
        raise HubError(f"Stopped downloading {repo_id} from the Hub: {e}. No incomplete file was put in "
                       f"{folder}.") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, *_network_errors()) as e:
        why = f"the Hugging Face Hub cannot be reached ({_describe(e)})"
        raise HubError(_unreachable(repo_id, folder, missing, why)) from None
    except OSError as e:  # after the network errors, which are OSErrors too: the disk, or a file that came short
        raise HubError(f"Downloading {repo_id} into {folder} failed: {_describe(e)}") from None


def _unreachable(repo_id, folder, missing, why):
    return (f"Cannot load {repo_id}: it is not a local folder, {why}, and no copy is cached ({folder} lacks "
            f"{' and '.join(missing)}). "
            "Connect to the internet once to download it there (set MINIBRIDGE_HOME or pass cache_dir to "
            "keep downloads elsewhere), or point minibridge at a local folder in the Hub layout that holds "
            "config.json and model.safetensors: `--model path/to/folder` on the command line, "
            "`from_pretrained(\"path/to/folder\")` in Python. To run the code without the trained weights, "
            "`minibridge random-checkpoint FOLDER` makes such a folder of random weights (its outputs are noise).")


def _no_weights(repo_id, revision, names):
    listed = ", ".join(sorted(names)[:12]) or "no files"
    return (f"The Hub repo {repo_id} (revision {revision}) holds no weights minibridge can read ({SINGLE}, "
            f"{INDEX} with shards, or {TORCH_BIN}); it has: {listed}.")


def _network_errors():
    """Exception types meaning "no connection", for whichever HTTP client huggingface_hub uses.

    The builtins cover huggingface_hub's OfflineModeIsEnabled; httpx's errors (huggingface_hub >= 1.0
    vendors it as httpx2) and requests' (before 1.0) do not derive from them; we take their base classes,
    so that a cut connection, a redirect loop or a garbled answer is caught too, not only a refused one.
    Only a client that is already imported can have raised, so nothing new is imported here.
    """
    errors = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _describe(error):
    """'Type: first line of the message', and the URL it happened at where the HTTP client says."""
    text = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    try:
        url = str(error.request.url)  # httpx's and requests' errors know their request
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for an error without one
        return text
    return text if url in text else f"{text} (at {url})"
