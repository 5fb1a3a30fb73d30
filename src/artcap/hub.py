"""Models on the Hugging Face Hub: load `hf:OWNER/NAME[@REVISION]`, push a model folder with its card.

    folder, commit = resolve_model_source("hf:someone/artcap-wikiart@v1")   # cached, revision pinned
    plan = plan_push(Path("runs/mine/model"), "someone/artcap-wikiart")      # what would be uploaded
    url = push_model(plan)

Downloads go through `huggingface_hub.snapshot_download`, so its cache (HF_HUB_CACHE / HF_HOME),
offline mode (HF_HUB_OFFLINE=1), endpoint (HF_ENDPOINT) and login (HF_TOKEN or `hf auth login`)
apply unchanged. Every failure is one ArtcapError line that names the model and says what to do.

On the Hub a model's card is its README.md, whose YAML front matter is the metadata the Hub indexes
(license, datasets, pipeline_tag, ...). `push` uploads the folder's files as they are and writes the
repository's README.md from the folder's card (README.md if there is one, else MODEL_CARD.md) with
artcap's metadata merged into its front matter. The local folder is never changed.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ArtcapError, first_line
from .paths import walk_folder

HF_PREFIX = "hf:"
MODEL_FILES = ("config.json", "vocab.json", "model.safetensors")  # what every artcap model folder holds
CARD_FILES = ("README.md", "MODEL_CARD.md")  # replaced by the generated README.md in the repository
LIST_KEYS = ("datasets", "metrics", "tags", "language")  # merged as unions; other keys: the folder's card wins


# ---- loading ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubModel:
    """`hf:OWNER/NAME[@REVISION]`, parsed."""
    repo_id: str
    revision: str | None = None  # None: the default branch

    @classmethod
    def parse(cls, spec: str) -> "HubModel":
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        if not spec.startswith(HF_PREFIX):
            raise ArtcapError(f"{spec}: not a Hub model; write hf:OWNER/NAME or hf:OWNER/NAME@REVISION")
        repo_id, at, revision = spec[len(HF_PREFIX):].partition("@")
        if "/" not in repo_id or (at and not revision):
            raise ArtcapError(f"{spec}: write hf:OWNER/NAME or hf:OWNER/NAME@REVISION (a branch, tag or commit)")
        try:
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise ArtcapError(f"{spec}: {repo_id!r} is not a Hub repository id ({first_line(e)})") from None
        return cls(repo_id, revision or None)

    def __str__(self) -> str:
        return f"{HF_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def is_hub_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def resolve_model_source(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """A local model folder -> (it, None). `hf:OWNER/NAME[@REVISION]` -> (the downloaded snapshot
    folder, its commit hash): the commit pins exactly which weights a job used, whatever the branch
    points to later. A copy in the local cache is used without the network, and offline."""
    if not is_hub_spec(spec):
        return Path(spec), None
    return download_model(HubModel.parse(str(spec)))


def download_model(model: HubModel) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model.repo_id, revision=model.revision, repo_type="model",
                                        library_name="artcap", library_version=__version__))
    except Exception as e:  # noqa: BLE001 - every failure of the download becomes one line
        raise _download_error(model, e) from None
    commit = folder.name  # the cache keeps each revision in snapshots/<commit hash>/
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ArtcapError(f"{model}: the Hub cache gave {folder}, which is not a snapshots/<commit> folder")
    if not (folder / "config.json").is_file():
        raise ArtcapError(f"{model}: the repository holds no config.json, so it is not an artcap model "
                          f"(artcap push uploads one)")
    return folder, commit


def _hub_errors():
    try:
        from huggingface_hub import errors
    except ImportError:  # huggingface_hub < 0.24 keeps them in utils
        from huggingface_hub import utils as errors
    return errors


def _download_error(model: HubModel, error: Exception) -> ArtcapError:
    from huggingface_hub import constants

    errors = _hub_errors()
    cache = constants.HF_HUB_CACHE
    if isinstance(error, errors.GatedRepoError):
        why = "is gated: accept its terms on the Hub, then log in (hf auth login, or set HF_TOKEN)"
    elif isinstance(error, errors.RepositoryNotFoundError):
        why = "no such model repository on the Hub (a private one needs a login: hf auth login, or set HF_TOKEN)"
    elif isinstance(error, errors.RevisionNotFoundError):
        why = f"the repository has no revision {model.revision!r}; name a branch, tag or commit it has"
    elif isinstance(error, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) and constants.HF_HUB_OFFLINE:
        why = (f"not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; download it once "
               f"with the network (unset HF_HUB_OFFLINE) or point HF_HUB_CACHE at a cache that holds it")
    elif isinstance(error, errors.LocalEntryNotFoundError):
        why = (f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} and no copy is cached in {cache}; "
               f"connect, or run where it is cached")
    elif isinstance(error, errors.HfHubHTTPError):
        why = f"the Hub refused the download ({first_line(error)})"
    elif _is_network_error(error):
        why = f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({_describe(error)})"
    else:
        why = f"download failed ({_describe(error)})"
    return ArtcapError(f"{model}: {why}")


def _is_network_error(error: BaseException) -> bool:
    # requests' errors are OSErrors; httpx's are not, so recognise them by their module.
    module = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or module in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


# ---- pushing ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PushPlan:
    """One commit to the Hub: the model folder's files, plus README.md written from `card`."""
    model_dir: Path
    repo_id: str
    files: tuple[str, ...]  # names inside model_dir, uploaded unchanged
    metadata: dict[str, Any]  # the card's front matter
    card: str  # the repository's README.md: front matter + the folder's card text


def default_card_metadata(config) -> dict[str, Any]:
    """The Hub metadata of an artcap model (`config`: its ModelConfig) trained on ArtEmis / WikiArt (the folder's
    card may override it)."""
    encoder = config.encoder.name
    return {
        # ArtEmis annotations and WikiArt images are released for non-commercial research only,
        # and so is a model trained on them: no SPDX id says that, hence "other".
        "license": "other",
        "license_name": "artemis-wikiart-non-commercial-research",
        "language": ["en"],
        "datasets": ["ArtEmis", "WikiArt"],
        "metrics": ["bleu", "meteor", "rouge", "cider"],
        "pipeline_tag": "image-to-text",
        "library_name": "artcap",
        "tags": [t for t in ["image-captioning", "art", "artemis", "wikiart", "lstm", encoder] if t],
    }


def merge_card_metadata(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """`theirs` (the folder's front matter) wins for single values; lists are joined, ours first."""
    merged = {**ours, **theirs}
    for key in LIST_KEYS:
        if key in ours and key in theirs:
            values = [*_as_list(ours[key]), *_as_list(theirs[key])]
            merged[key] = list(dict.fromkeys(values))
    return merged


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def model_folder(path: str | os.PathLike) -> Path:
    """The model folder to push: `path`, or a run folder's `model/`."""
    from .model_folder import folder_of

    path = folder_of(path)
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if not path.is_dir() or missing:
        raise ArtcapError(f"{path}: not an artcap model folder (missing {', '.join(missing) or 'the folder'}); "
                          f"pass a model folder or a run folder")
    return path


def plan_push(model_dir: str | os.PathLike, repo_id: str, *, license: str | None = None) -> PushPlan:
    """What `push_model` would upload: every file of the folder, and README.md as the model card."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .model_folder import ModelConfig

    if "/" not in repo_id:
        raise ArtcapError(f"{repo_id}: name the repository as OWNER/NAME (your user or organisation name first)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ArtcapError(f"{repo_id}: not a Hub repository id ({first_line(e)})") from None
    folder = model_folder(model_dir)
    files = _readable_files(folder)  # every file the push reads, the card too, checked before any is read
    config = ModelConfig.read(folder)  # a damaged folder is refused before anything is uploaded
    card_file = next((folder / name for name in CARD_FILES if name in files), None)
    theirs: dict[str, Any] = {}
    body = f"# {repo_id}\n\nAn artcap captioning model.\n"
    if card_file is not None:
        theirs, body = _read_card(card_file)
    metadata = merge_card_metadata(default_card_metadata(config), theirs)
    if license is not None:  # an explicit --license beats both
        metadata = {k: v for k, v in metadata.items() if k not in ("license_name", "license_link")}
        metadata["license"] = license
    if f"{HF_PREFIX}{repo_id}" not in body:
        body = body.rstrip("\n") + "\n\n" + _usage_section(repo_id)
    uploaded = tuple(name for name in files if name not in CARD_FILES)  # the card is rewritten
    return PushPlan(folder, repo_id, uploaded, metadata, _render_card(metadata, body))


def _readable_files(folder: Path) -> tuple[str, ...]:
    """The names of the folder's files a push reads (all but hidden and temporary files), through
    paths.walk_folder; one ArtcapError line, before anything is read or sent, for a file that cannot be
    pushed as it is: a link out of the folder (its target is not the model's to publish), broken or looping."""
    def pushed(name: str) -> bool:
        return not name.startswith(".") and not name.endswith(".tmp")

    entries = walk_folder(folder, recursive=False, wanted=pushed)
    refused = [entry for entry in entries if entry.problem]
    if refused:
        more = f" ({len(refused) - 1} more file(s) like it)" if len(refused) > 1 else ""
        raise ArtcapError(f"{refused[0].path}: {refused[0].problem}{more}; nothing was uploaded")
    return tuple(entry.path.name for entry in entries)


def _read_card(path: Path) -> tuple[dict[str, Any], str]:
    """(front matter, text) of a card file; a card without front matter is all text."""
    import yaml
    from huggingface_hub import ModelCard

    content = path.read_text(encoding="utf-8")
    if not content.startswith("---"):  # ModelCard would log a warning about the missing block
        return {}, content
    try:
        card = ModelCard(content, ignore_metadata_errors=True)
    except (ValueError, yaml.YAMLError) as e:
        raise ArtcapError(f"{path}: its YAML front matter cannot be read ({first_line(e)}); fix it") from None
    return card.data.to_dict(), card.text


def _usage_section(repo_id: str) -> str:
    return (f"## Use it\n\n```bash\npip install artcap\nartcap caption --model {HF_PREFIX}{repo_id} painting.jpg\n```\n\n"
            f"```python\nfrom artcap import Captioner\ncaptioner = Captioner.load(\"{HF_PREFIX}{repo_id}\")\n"
            f"captioner.caption([\"painting.jpg\"])\n```\n")


def _render_card(metadata: dict[str, Any], body: str) -> str:
    import yaml

    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n{body.lstrip()}"


def push_model(plan: PushPlan, *, private: bool = False, message: str | None = None) -> str:
    """Create the repository if needed and upload the plan as one commit; return the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ArtcapError(f"{plan.repo_id}: cannot upload while HF_HUB_OFFLINE is set; unset it and connect")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.model_dir / name))
                  for name in plan.files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card.encode("utf-8")))
    api = HfApi()
    try:
        api.create_repo(plan.repo_id, private=private, exist_ok=True)
        commit = api.create_commit(plan.repo_id, operations,
                                   commit_message=message or f"Upload artcap model ({plan.model_dir.name})")
    except Exception as e:  # noqa: BLE001 - every failure of the upload becomes one line
        raise _upload_error(plan.repo_id, e) from None
    return str(commit.commit_url)


def _upload_error(repo_id: str, error: Exception) -> ArtcapError:
    from huggingface_hub import constants

    errors = _hub_errors()
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, errors.OfflineModeIsEnabled):
        why = "cannot upload while HF_HUB_OFFLINE is set; unset it and connect"
    elif status in (401, 403) or type(error).__name__ == "LocalTokenNotFoundError":
        why = "not allowed: log in with a write token (hf auth login, or set HF_TOKEN)"
    elif isinstance(error, errors.HfHubHTTPError):
        why = f"the Hub refused the upload ({first_line(error)})"
    elif _is_network_error(error):
        why = f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({_describe(error)})"
    else:
        why = f"upload failed ({_describe(error)})"
    return ArtcapError(f"{repo_id}: {why}")


# ---- the `artcap push` command --------------------------------------------------------------------------

def add_push_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a model folder with its card to the Hugging Face Hub",
                       description="Upload a model folder (or a run folder's model) to the Hugging Face Hub as "
                                   "one commit. The repository's README.md is the folder's card with the Hub "
                                   "metadata (license, datasets, metrics, pipeline_tag, tags) in its front "
                                   "matter; the local folder is not changed. Log in first: hf auth login, or "
                                   "set HF_TOKEN. Load it back with --model hf:OWNER/NAME.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model folder or run folder")
    p.add_argument("repo_id", metavar="OWNER/NAME", help="the Hub repository (created if it does not exist)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--license", default=None,
                   help="the card's license (a Hub license id such as apache-2.0; default: 'other', "
                        "non-commercial research, as the ArtEmis/WikiArt terms require)")
    p.add_argument("--message", "-m", default=None, help="the commit message")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card, upload nothing")
    p.set_defaults(func=run_push)


def run_push(args) -> int:
    plan = plan_push(args.model_dir, args.repo_id, license=args.license)
    if args.dry_run:
        print(f"would upload to {plan.repo_id}: {', '.join(plan.files)} and README.md (the card):")
        print(plan.card, end="")
        return 0
    url = push_model(plan, private=args.private, message=args.message)
    print(url)
    print(f"load it with: artcap caption --model {HF_PREFIX}{plan.repo_id} IMAGE", file=sys.stderr)
    return 0
