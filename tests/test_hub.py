"""Models on the Hugging Face Hub, without the network: a real Hub-layout cache built from the shipped
model, offline mode, and an endpoint on a closed local port. huggingface_hub reads HF_HUB_OFFLINE,
HF_HUB_CACHE and HF_ENDPOINT when it is imported, so each case runs in a fresh Python process."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from artcap.errors import ArtcapError
from artcap.hub import HubModel, merge_card_metadata, plan_push, resolve_model_source

REPO = "artcap-tests/wikiart-captioner"
COMMIT = "3f6c2b1a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"

RESOLVE = """
import json, sys
from artcap.errors import ArtcapError
from artcap.hub import resolve_model_source
try:
    folder, commit = resolve_model_source(sys.argv[1])
    print(json.dumps({"folder": str(folder), "commit": commit}))
except ArtcapError as e:
    print(f"artcap: error: {e}", file=sys.stderr)
    sys.exit(2)
"""

# The `artcap push` command as cli.main runs it (parser, ArtcapError -> one line, exit code 2).
PUSH_CLI = """
import argparse, sys
from artcap.errors import ArtcapError
from artcap.hub import add_push_parser
parser = argparse.ArgumentParser(prog="artcap")
add_push_parser(parser.add_subparsers(required=True))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.func(args))
except ArtcapError as e:
    print(f"artcap: error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def build_hub_cache(cache: Path, model_dir: Path, repo_id: str = REPO, commit: str = COMMIT) -> Path:
    """The layout snapshot_download leaves: blobs named by hash, snapshots/<commit>/ of links, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(model_dir.iterdir()):
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    return snapshot


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def hub_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_CACHE=str(tmp_path / "hub-cache"),
               HF_HUB_DISABLE_TELEMETRY="1", **overrides)
    return env


def run_python(code: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("artcap: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# ---- loading ------------------------------------------------------------------------------------------

def test_hub_specs_are_parsed_and_bad_ones_refused_in_one_line():
    assert HubModel.parse("hf:owner/name") == HubModel("owner/name", None)
    assert HubModel.parse("hf:owner/name@v1.0") == HubModel("owner/name", "v1.0")
    assert str(HubModel.parse(f"hf:owner/name@{COMMIT}")) == f"hf:owner/name@{COMMIT}"
    for bad in ["hf:", "hf:name-only", "hf:owner/name@", "hf:a//b", "hf:own er/name"]:
        with pytest.raises(ArtcapError) as info:
            HubModel.parse(bad)
        assert "\n" not in str(info.value) and bad in str(info.value)


def test_a_local_folder_is_returned_as_it_is(model_dir):
    assert resolve_model_source(model_dir) == (model_dir, None)
    assert resolve_model_source(str(model_dir)) == (model_dir, None)


@pytest.mark.slow
def test_a_cached_model_resolves_offline_to_its_commit_and_captions_like_the_original(tmp_path, model_dir,
                                                                                       captioner):
    from artcap.captioner import Captioner
    from artcap.example import draw_example_painting

    snapshot = build_hub_cache(tmp_path / "hub-cache", model_dir)
    env = hub_env(tmp_path, HF_HUB_OFFLINE="1")
    for spec in [f"hf:{REPO}", f"hf:{REPO}@main", f"hf:{REPO}@{COMMIT}"]:
        result = run_python(RESOLVE, [spec], env)
        assert result.returncode == 0, result.stderr
        resolved = json.loads(result.stdout)
        assert resolved == {"folder": str(snapshot), "commit": COMMIT}
    downloaded = Captioner.load(resolved["folder"])
    painting = draw_example_painting(224)
    assert downloaded.caption([painting]) == captioner.caption([painting])


def test_an_unreachable_hub_falls_back_to_the_cached_copy(tmp_path, model_dir):
    snapshot = build_hub_cache(tmp_path / "hub-cache", model_dir)
    env = hub_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    result = run_python(RESOLVE, [f"hf:{REPO}"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"folder": str(snapshot), "commit": COMMIT}


def test_offline_without_a_cached_copy_fails_in_one_line(tmp_path, model_dir):
    build_hub_cache(tmp_path / "hub-cache", model_dir)
    env = hub_env(tmp_path, HF_HUB_OFFLINE="1")
    assert_one_line_error(run_python(RESOLVE, ["hf:someone/not-cached"], env),
                          "hf:someone/not-cached", "HF_HUB_OFFLINE", str(tmp_path / "hub-cache"))
    assert_one_line_error(run_python(RESOLVE, [f"hf:{REPO}@v2"], env), f"hf:{REPO}@v2", "HF_HUB_OFFLINE")


def test_an_unreachable_hub_without_a_cached_copy_fails_in_one_line(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_python(RESOLVE, ["hf:someone/not-cached"], hub_env(tmp_path, HF_ENDPOINT=endpoint))
    assert_one_line_error(result, "hf:someone/not-cached", "cannot reach the Hugging Face Hub", endpoint)


def test_a_repository_without_an_artcap_model_is_refused_in_one_line(tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "weights.bin").write_bytes(b"\0" * 16)
    build_hub_cache(tmp_path / "hub-cache", not_a_model)
    result = run_python(RESOLVE, [f"hf:{REPO}"], hub_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert_one_line_error(result, f"hf:{REPO}", "no config.json")


# ---- pushing ------------------------------------------------------------------------------------------

def read_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body.lstrip("\n")


def folder_state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_push_plan_uploads_the_model_files_and_a_card_with_hub_metadata(model_dir):
    before = folder_state(model_dir)
    plan = plan_push(model_dir, "someone/artcap-wikiart")
    assert set(plan.files) == {p.name for p in model_dir.iterdir()} - {"MODEL_CARD.md", "README.md"}
    assert {"config.json", "vocab.json", "model.safetensors"} <= set(plan.files)
    metadata, body = read_card(plan.card)
    assert metadata == plan.metadata
    assert metadata["pipeline_tag"] == "image-to-text" and metadata["library_name"] == "artcap"
    assert metadata["license"] == "other" and metadata["license_name"]
    assert metadata["datasets"] == ["ArtEmis", "WikiArt"]
    assert set(metadata["metrics"]) == {"bleu", "meteor", "rouge", "cider"}
    encoder = json.loads((model_dir / "config.json").read_text())["encoder"]["name"]
    assert "image-captioning" in metadata["tags"] and encoder in metadata["tags"]
    card_text = (model_dir / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert body.strip().startswith(card_text.strip())  # the folder's card, then how to load it
    assert "--model hf:someone/artcap-wikiart" in body
    assert folder_state(model_dir) == before  # the local folder is never changed


def test_push_merges_the_front_matter_a_folder_already_has(tmp_path, model_dir):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "README.md").write_text("---\nlicense: cc-by-nc-4.0\ntags: [my-collection, art]\nbase_model: x/y\n"
                                      "---\n# My captioner\nTrained on my museum's labels.\n", encoding="utf-8")
    plan = plan_push(folder, "someone/mine")
    metadata, body = read_card(plan.card)
    assert metadata["license"] == "cc-by-nc-4.0" and metadata["base_model"] == "x/y"  # the folder's choices win
    assert metadata["tags"].count("art") == 1 and "my-collection" in metadata["tags"] and "lstm" in metadata["tags"]
    assert metadata["pipeline_tag"] == "image-to-text"
    assert body.startswith("# My captioner\nTrained on my museum's labels.\n")
    assert "README.md" not in plan.files and "MODEL_CARD.md" not in plan.files
    assert plan_push(folder, "someone/mine", license="apache-2.0").metadata["license"] == "apache-2.0"
    # pushing what was pushed (a downloaded snapshot has README.md) gives the same card
    (folder / "README.md").write_text(plan.card, encoding="utf-8")
    assert plan_push(folder, "someone/mine").card == plan.card


def test_card_metadata_merge_keeps_lists_and_their_values():
    merged = merge_card_metadata({"tags": ["a", "b"], "license": "other", "pipeline_tag": "image-to-text"},
                                 {"tags": "c", "license": "mit"})
    assert merged == {"tags": ["a", "b", "c"], "license": "mit", "pipeline_tag": "image-to-text"}


def test_push_refuses_what_is_not_a_model_folder_or_repository_in_one_line(tmp_path, model_dir):
    for folder, repo, fragment in [(tmp_path, "someone/x", "not an artcap model folder"),
                                   (model_dir, "no-owner", "OWNER/NAME"),
                                   (model_dir, "some one/x", "not a Hub repository id")]:
        with pytest.raises(ArtcapError) as info:
            plan_push(folder, repo)
        assert "\n" not in str(info.value) and fragment in str(info.value)
    bad_card = tmp_path / "model"
    shutil.copytree(model_dir, bad_card)
    (bad_card / "README.md").write_text("---\nlicense: [unclosed\n---\ntext\n")
    with pytest.raises(ArtcapError, match="README.md: its YAML front matter cannot be read"):
        plan_push(bad_card, "someone/x")


def test_push_dry_run_prints_the_upload_without_the_network(tmp_path, model_dir):
    env = hub_env(tmp_path, HF_HUB_OFFLINE="1")
    result = run_python(PUSH_CLI, ["push", str(model_dir), "someone/artcap-wikiart", "--dry-run"], env)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.splitlines()[0].startswith("would upload to someone/artcap-wikiart: config.json")
    assert plan_push(model_dir, "someone/artcap-wikiart").card in result.stdout


def test_push_offline_fails_in_one_line(tmp_path, model_dir):
    result = run_python(PUSH_CLI, ["push", str(model_dir), "someone/artcap-wikiart"],
                        hub_env(tmp_path, HF_HUB_OFFLINE="1"))
    assert_one_line_error(result, "someone/artcap-wikiart", "HF_HUB_OFFLINE")


def test_push_to_an_unreachable_hub_fails_in_one_line(tmp_path, model_dir):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for token in ({}, {"HF_TOKEN": "hf_not_a_real_token"}):  # with and without a login
        result = run_python(PUSH_CLI, ["push", str(model_dir), "someone/artcap-wikiart"],
                            hub_env(tmp_path, HF_ENDPOINT=endpoint, **token))
        assert_one_line_error(result, "someone/artcap-wikiart", "cannot reach the Hugging Face Hub", endpoint)
