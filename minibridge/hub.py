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
"""

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

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


class HubError(Exception):
    """A checkpoint that cannot be found or fetched; the message says what to do about it."""


def resolve(name_or_path, revision=None, cache_dir=None, *, files=DEFAULT_FILES, weights=True):
    """Local folder of a checkpoint: a folder path as is, or a Hub repo id, downloaded on first use.

    name_or_path: a folder in the Hub layout, or "owner/name" on the Hugging Face Hub.
    revision: branch, tag, commit or "refs/pr/N"; None = main, with weights from the conversion PR
        where main has no safetensors (official BridgeTower repos).
    cache_dir: where downloads go; default `default_home()`.
    files: the non-weight files to fetch (those the repo lacks are skipped); weights: fetch weights too.
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
    with _hub_errors(repo_id, revision, folder, missing):
        _download(repo_id, revision, folder, files, weights)
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
    try:
        shards = set(json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


# ---- downloading ---------------------------------------------------------------------------------


def _download(repo_id, revision, folder, files, weights):
    """Fetch the wanted files of one repo into `folder` (huggingface_hub shows its progress bars)."""
    small = list(dict.fromkeys(["config.json", *files]))  # config.json always: it marks a usable folder
    base = revision or "main"
    if not weights:
        _snapshot(repo_id, base, folder, small)
        return
    weights_revision, patterns, why = _find_weights(repo_id, revision)
    _say(f"{repo_id}: weights from revision {weights_revision}{why}, into {folder}")
    if weights_revision == base:
        _snapshot(repo_id, base, folder, small + patterns)
    else:
        # As transformers does: config and tokenizer from main, only the weights from the PR, whose
        # branch may predate later fixes to the small files on main.
        _snapshot(repo_id, base, folder, small)
        _snapshot(repo_id, weights_revision, folder, patterns)


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
    except (LocalEntryNotFoundError, HfHubHTTPError, *_network_errors()) as e:
        why = f"the Hugging Face Hub cannot be reached ({type(e).__name__}: {_first_line(e)})"
        raise HubError(_unreachable(repo_id, folder, missing, why)) from None


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
    vendors it as httpx2) and requests' (before 1.0) do not derive from them. Only a client that is
    already imported can have raised, so nothing new is imported here.
    """
    errors = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ["TransportError"]), ("httpx", ["TransportError"]),
                          ("requests", ["ConnectionError", "Timeout"])):
        if module in sys.modules:
            errors += [getattr(sys.modules[module], name) for name in names]
    return tuple(errors)


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0]
