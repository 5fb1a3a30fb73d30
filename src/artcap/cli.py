"""The `artcap` command line: a thin layer over the Python API. User mistakes end in one line."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from . import settings
from .decode import DecodingConfig
from .errors import ArtcapError
from .names import clean_text, encode_name
from .records import csv_cell
from .settings import bounded
from .stdout import StdoutWriteError, guarded_stdout

log = logging.getLogger("artcap")


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("artcap: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


# ---- caption ------------------------------------------------------------------------------------

def add_caption_parser(sub) -> None:
    from .caption_files import DEFAULT_BATCH_SIZE, DEFAULT_NUM_WORKERS

    p = sub.add_parser("caption", help="caption images or folders of images",
                       description="Caption image files and folders. Bad files are reported (exit code 1) and "
                                   "never stop the others. With --out, captions go to a resumable record file: "
                                   "re-run the same command after any interruption to finish the job.")
    p.add_argument("inputs", nargs="*", help="image files and/or folders")
    p.add_argument("--iiif", default=None, metavar="MANIFEST",
                   help="caption every canvas of a IIIF Presentation 3 manifest or collection (a URL or a file) "
                        "instead of INPUTS; see docs/iiif.md")
    p.add_argument("--annotations", type=Path, default=None, metavar="OUT.json",
                   help="with --iiif: write the captions as one W3C Web Annotation page (IIIF viewers show it)")
    p.add_argument("--annotations-dir", type=Path, default=None, metavar="DIR",
                   help="with --iiif: one annotation page per manifest into DIR (collections)")
    p.add_argument("--out", "-o", type=Path, default=None, metavar="FILE",
                   help="write one record per image to FILE (.jsonl or .csv), resuming what FILE already holds")
    p.add_argument("--model", default=None,
                   help="a shipped model's name (artcap models), a model or run folder, or hf:OWNER/NAME[@REVISION] "
                        "(default: the default shipped model)")
    settings.add_arguments(p.add_argument_group("decoding (every field of DecodingConfig)"), DecodingConfig)
    p.add_argument("--emotion", default=None, metavar="NAME|auto",
                   help="emotion-grounded models: caption under this emotion (amusement, awe, contentment, excitement, "
                        "anger, disgust, fear, sadness, something-else) or auto, the emotion classifier's choice "
                        "(the default)")
    p.add_argument("--format", choices=["text", "json", "csv"], default="text",
                   help="stdout format without --out (with --out the file's suffix decides)")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    p.add_argument("--explain", type=Path, default=None, metavar="DIR",
                   help="write one picture per image into DIR: the caption's words with where each looked "
                        "(attention models, e.g. --model sat)")
    p.add_argument("--xmp", action="store_true",
                   help="write each caption into an XMP sidecar beside its image (IMAGE.EXT.xmp), updating one that "
                        "is there")
    p.add_argument("--xmp-dir", type=Path, default=None, metavar="DIR",
                   help="write the XMP sidecars into a mirror tree under DIR instead (read-only collections)")
    p.add_argument("--embed", action="store_true",
                   help="write the caption into the image files themselves with exiftool (keeps NAME_original)")
    p.add_argument("--embed-no-backup", action="store_true", help="with --embed: keep no NAME_original backups")
    p.add_argument("--overwrite-description", action="store_true",
                   help="with --xmp/--xmp-dir/--embed: put the caption in the alt text and description even where a "
                        "person wrote one (by default their words are kept and the caption goes beside them)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="caption on Ray (pip install 'artcap[ray]'), with --out: alone or 'local' starts Ray on this "
                        "machine; ADDRESS (host:6379, ray://host:10001, auto) joins a cluster. Put it after the inputs")
    p.add_argument("--num-actors", type=bounded(int, 1, 4096), default=None, metavar="N",
                   help="with --ray: captioning actors, each loading the model once (default: the cluster's CPUs less one)")
    p.add_argument("--batch-size", type=bounded(int, 1, 4096), default=DEFAULT_BATCH_SIZE,
                   help=f"images per model call (default: {DEFAULT_BATCH_SIZE}, fastest on a 2-core CPU)")
    p.add_argument("--num-workers", type=bounded(int, 0, 64), default=DEFAULT_NUM_WORKERS,
                   help=f"image-decoding processes overlapping inference; 0 decodes in the main process "
                        f"(default here: {DEFAULT_NUM_WORKERS}: 0 on 2 cores or fewer, where a worker only competes)")
    p.set_defaults(func=run_caption)


def run_caption(args) -> int:
    from .captioner import Captioner
    from .collection import caption_collection

    _check_caption_args(args)
    if args.iiif is None and not args.inputs:
        raise ArtcapError("caption: name image files or folders, or a manifest with --iiif URL")
    if args.iiif is None and (args.annotations is not None or args.annotations_dir is not None):
        raise ArtcapError("--annotations and --annotations-dir write a IIIF job's captions: add --iiif MANIFEST")
    if args.iiif is not None:
        return _caption_iiif(args)
    metadata = _metadata_writer(args)
    if args.ray is not None:
        return _caption_on_ray(args, metadata)
    captioner = Captioner.load(args.model, backend=args.backend)
    if args.explain is not None and not captioner.has_attention:
        raise ArtcapError(f"--explain: model {captioner.model_id} ({captioner.decoder.kind} decoder) has no attention "
                          f"to show; use an attention model, e.g. --model sat")
    if args.out is None:
        return _caption_to_stdout(args, captioner, metadata)
    summary = caption_collection(captioner, args.inputs, args.out, recursive=args.recursive,
                                 batch_size=args.batch_size, num_workers=args.num_workers, emotion=args.emotion,
                                 metadata=metadata, progress=not args.quiet, **_decoding_overrides(args))
    return _summarise(summary)


def _caption_iiif(args) -> int:
    from .annotations import check_page_target, page_file_name, write_annotation_page
    from .captioner import Captioner
    from .iiif_job import caption_iiif

    if args.inputs or args.xmp or args.xmp_dir or args.embed or args.ray or args.explain:
        raise ArtcapError("--iiif captions a manifest's canvases: drop the other inputs and --xmp/--embed/--ray/--explain")
    if args.out is None and args.annotations is None and args.annotations_dir is None:
        raise ArtcapError("--iiif needs somewhere to write: --annotations OUT.json, --annotations-dir DIR or --out FILE.jsonl")
    if args.annotations is not None:
        check_page_target(args.annotations)  # before any work
    captioner = Captioner.load(args.model, backend=args.backend)
    decoding = captioner.resolve_decoding(**_decoding_overrides(args))
    summary = caption_iiif(captioner, args.iiif, args.out, decoding=decoding, emotion=args.emotion,
                           batch_size=args.batch_size, progress=not args.quiet)
    if args.annotations is not None:
        if len(summary.manifests) != 1:
            raise ArtcapError(f"{args.iiif}: {len(summary.manifests)} manifests; write one page each with --annotations-dir DIR")
        write_annotation_page(args.annotations, summary.annotation_page(summary.manifests[0]))
    for manifest in summary.manifests if args.annotations_dir is not None else []:
        write_annotation_page(args.annotations_dir / page_file_name(manifest.id), summary.annotation_page(manifest))
    log.info("%s: %d canvases in %d manifest(s) (%d captioned now at %.1f images/s, %d already there)", args.iiif,
             summary.total, len(summary.manifests), summary.captioned, summary.images_per_second, summary.skipped)
    return _report_failures(summary.errors, summary.total)


def _caption_on_ray(args, metadata) -> int:
    from .ray_job import RayOptions, caption_collection_ray

    if args.out is None:
        raise ArtcapError("--ray writes a record file: add --out FILE (.jsonl or .csv)")
    options = RayOptions(args.ray, args.num_actors, backend=args.backend, batch_size=args.batch_size)
    return _summarise(caption_collection_ray(args.model, args.inputs, args.out, options, recursive=args.recursive,
                                             emotion=args.emotion, metadata=metadata, progress=not args.quiet,
                                             **_decoding_overrides(args)))


def _decoding_overrides(args) -> dict:
    """The decoding fields the user set, one way for every caption path (stdout, --out, --ray, --iiif)."""
    return settings.check_overrides(DecodingConfig, settings.overrides(args, DecodingConfig))


def _summarise(summary) -> int:
    log.info("%s: %d images (%d captioned now at %.1f images/s, %d retried, %d already there)", summary.out,
             summary.total, summary.captioned, summary.images_per_second, summary.retried, summary.skipped)
    return _report_failures(summary.errors, summary.total + summary.unusable_inputs)


def _check_caption_args(args) -> None:
    from .captioner import emotion_name

    if args.emotion is not None:
        args.emotion = emotion_name(args.emotion)
    if args.embed_no_backup and not args.embed:
        raise ArtcapError("--embed-no-backup needs --embed")
    if args.explain is not None and args.out is not None:
        raise ArtcapError("--explain writes pictures for the images you name; use it without --out")
    if args.num_actors is not None and args.ray is None:
        raise ArtcapError("--num-actors needs --ray")


def _metadata_writer(args):
    from .xmp import MetadataWriter, mirror_root

    return MetadataWriter(sidecars=args.xmp or args.xmp_dir is not None, xmp_dir=args.xmp_dir,
                          root=mirror_root(args.inputs), embed=args.embed, backup=not args.embed_no_backup,
                          overwrite_description=args.overwrite_description)


def _report_failures(failed: list[tuple[str, str]], total: int) -> int:
    if not failed:
        return 0
    log.error("%d of %d input(s) could not be captioned:", len(failed), total)
    for _, message in failed:
        log.error("  %s", clean_text(message))  # one line each, whatever the file names hold
    return 1


def _caption_to_stdout(args, captioner, metadata) -> int:
    """Caption the inputs to stdout as text, CSV or JSON (with attention maps for attention models),
    writing --explain pictures and metadata on the way."""
    from .caption_files import caption_paths
    from .explain import write_explanation
    from .images import find_images

    paths, errors = find_images(args.inputs, recursive=args.recursive)
    failed = [(str(e.source), str(e)) for e in errors]
    decoding = captioner.resolve_decoding(**_decoding_overrides(args))
    printer = _RecordPrinter(args.format, captioner, decoding)
    for source, message in failed:  # inputs that yielded no image
        printer.add({"path": source, "caption": None, "error": message, "emotion": None, "emotion_scores": None})
    with_attention = captioner.has_attention and (args.explain is not None or args.format == "json")
    with metadata:
        for result in caption_paths(captioner, paths, batch_size=args.batch_size, num_workers=args.num_workers,
                                    decoding=decoding, emotion=args.emotion, with_attention=with_attention):
            error = result.error
            if error is None and metadata.enabled:
                error = metadata.write(result.path, result.caption, captioner.source, decoding.to_dict(),
                                       result.description.emotion)
            if error is None and args.explain is not None:  # a picture that cannot be written fails its image only
                error = write_explanation(result.path, result.description, captioner.feature_spec.grid_size,
                                          args.explain)
            if error:
                failed.append((str(result.path), error))
            printer.add(_stdout_record(result, error, captioner.feature_spec.grid_size))
    printer.close()
    return _report_failures(failed, len(paths) + len(errors))


def _stdout_record(result, error: str | None, grid_size: int) -> dict:
    description = result.description
    record = {"path": result.path, "caption": result.caption, "error": error,
              "emotion": description.emotion if description else None,
              "emotion_scores": description.emotion_scores if description else None}
    if description is not None and description.attention is not None:
        record["words"] = [{"word": clean_text(w), "attention": m}
                           for w, m in zip(description.words, description.attention_maps(grid_size))]
    return record


class _RecordPrinter:
    """Writes caption records to stdout as they come: `path<TAB>caption` lines, CSV rows, or one JSON
    document. Every format names a file by names.encode_name and writes text through names.clean_text
    (CSV cells through records.csv_cell), so each stays well-formed whatever the names hold."""

    def __init__(self, fmt: str, captioner, decoding) -> None:
        self.format, self.captioner, self.decoding, self.records = fmt, captioner, decoding, []
        self.csv = csv.writer(sys.stdout) if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(["path", "caption", "error", "emotion", "emotion_scores"])

    def add(self, record: dict) -> None:
        record = {**record, "path": encode_name(record["path"]),
                  **{k: clean_text(record[k]) if record[k] is not None else None for k in ("caption", "error")}}
        if self.format == "text":
            if record["caption"] is not None:
                print(f"{record['path']}\t{record['caption']}", flush=True)
        elif self.csv:
            self.csv.writerow([csv_cell(record[k]) for k in ("path", "caption", "error", "emotion", "emotion_scores")])
            sys.stdout.flush()
        else:
            self.records.append(record)

    def close(self) -> None:
        if self.format == "json":
            json.dump({"model": self.captioner.model_id, "decoding": self.decoding.to_dict(), "captions": self.records},
                      sys.stdout, indent=2)
            sys.stdout.write("\n")


# ---- models -------------------------------------------------------------------------------------

def add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="list the models shipped inside artcap",
                       description="One line per shipped model: its name (for --model), decoder, test scores.")
    p.set_defaults(func=run_models)


def run_models(args) -> int:
    from .captioner import DEFAULT_MODEL_DIR, shipped_models
    from .model_folder import ModelConfig

    for name, path in shipped_models().items():
        config = ModelConfig.read(path)
        summary = config.summary or f"{config.decoder['kind']} decoder"
        default = " (default)" if path == DEFAULT_MODEL_DIR else ""
        print(f"{name}{default}\t{summary}")
    return 0


# ---- features -----------------------------------------------------------------------------------

def _add_config_args(p) -> None:
    """--config and --set, plus shortcuts for the keys most often given on the command line."""
    p.add_argument("--config", type=Path, default=None, help="TOML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a config setting (repeatable), e.g. --set optim.epochs=2 "
                        "--set decoder.kind=sat (docs/training.md lists the tables)")
    p.add_argument("--data", help="ArtEmis CSV or Flickr8k captions.txt (config key: data.captions)")
    p.add_argument("--images", help="image folder (config key: data.images)")
    p.add_argument("--encoder", help="encoder name (config key: encoder.name)")
    p.add_argument("--encoder-weights", help="imagenet | random | FILE (config key: encoder.weights)")
    p.add_argument("--image-size", type=bounded(int, 32, 2048), help="input size in pixels (config key: "
                                                                      "encoder.image_size)")
    p.add_argument("--cache", help="feature cache folder (config key: encoder.feature_cache)")
    p.add_argument("--skip-missing", action="store_true", help="go on without bad rows and unreadable images")


def add_features_parser(sub) -> None:
    p = sub.add_parser("features", help="extract and cache image features for a data set",
                       description="Encode every image of a data set once and cache the features on disk "
                                   "(reused by train and evaluate). Takes the same config as train.")
    _add_config_args(p)
    p.set_defaults(func=run_features)


def _config_from_args(args):
    from .config import load_config

    overrides = list(args.overrides)
    for flag, key in [("data", "data.captions"), ("images", "data.images"), ("encoder", "encoder.name"),
                      ("encoder_weights", "encoder.weights"), ("image_size", "encoder.image_size"),
                      ("cache", "encoder.feature_cache")]:
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "skip_missing", False):
        overrides.append("data.skip_missing=true")
    return load_config(args.config, overrides)


def run_features(args) -> int:
    import time

    from .corpus import load_corpus

    config = _config_from_args(args)
    started = time.perf_counter()
    device = config.run.device
    corpus = load_corpus(config, device=device if device != "auto" else "cpu", backend=args.backend,
                         progress=not args.quiet)
    log.info("%d images' features ready in %s (%.1f s)", len(corpus.features),
             Path(config.encoder.feature_cache or "~/.cache/artcap/features"), time.perf_counter() - started)
    return 0


# ---- train --------------------------------------------------------------------------------------

def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a captioner (resumable; torchrun for data-parallel)",
                       description="Train a captioner (the decoder named by the config: merge or sat). Writes a run folder (config, splits, vocabulary, "
                                   "history, checkpoint, best model). --resume continues an interrupted run.")
    _add_config_args(p)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (its config.toml is used; "
                        "--set may change e.g. epochs)")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from .train import train

    if args.resume is not None:
        config_path = args.resume / "config.toml"
        if not config_path.is_file():
            raise ArtcapError(f"{args.resume}: not a run folder (no config.toml)")
        args.config, args.overrides = config_path, [*args.overrides, f"run.out={args.resume}"]
    config = _config_from_args(args)
    run = train(config, resume=args.resume is not None, progress=not args.quiet)
    if not (run / "model" / "config.json").is_file():
        raise ArtcapError(f"{run}: training ended without exporting a model; see the messages above")
    log.info("run folder: %s (best model in %s)", run, run / "model")
    return 0


# ---- config -------------------------------------------------------------------------------------

def add_config_parser(sub) -> None:
    p = sub.add_parser("config", help="convert an old flat training config to tables",
                       description="Print a training config in the [tables] layout (docs/training.md): "
                                   "artcap config migrate OLD.toml > NEW.toml. Comments are not carried over.")
    p.add_argument("action", choices=["migrate"], help="what to do")
    p.add_argument("path", type=Path, metavar="CONFIG", help="a TOML training config (flat or nested)")
    p.set_defaults(func=run_config)


def run_config(args) -> int:
    from .config import migrate_text

    sys.stdout.write(migrate_text(args.path))
    return 0


# ---- serve --------------------------------------------------------------------------------------

def add_serve_parser(sub) -> None:
    from .images import DEFAULT_MAX_PIXELS
    from .server.settings import MAX_PIXELS, MAX_UPLOAD_BYTES, MiB

    p = sub.add_parser("serve", help="serve the web page and HTTP API",
                       description="Serve the drop-a-painting web page at / and the JSON API at POST /v1/captions "
                                   "(OpenAPI at /openapi.json, docs at /docs). Needs the [serve] extra.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=bounded(int, 1, 65535), default=8000, help="TCP port (default 8000)")
    p.add_argument("--model", default=None, help="a shipped model's name, a model or run folder, or hf:OWNER/NAME[@REVISION] "
                                                 "(default: the default shipped model)")
    # The server's own limits (ServerSettings) bound these: the flag refuses what the server would.
    upload_mib = MAX_UPLOAD_BYTES // MiB
    p.add_argument("--max-upload-mb", type=bounded(float, 0, upload_mib, open_low=True), default=20.0,
                   help=f"largest accepted upload in MiB (default 20, at most {upload_mib})")
    p.add_argument("--max-pixels", type=bounded(int, 1, MAX_PIXELS), default=DEFAULT_MAX_PIXELS,
                   help=f"largest accepted image in pixels, width x height (default {DEFAULT_MAX_PIXELS}, at most "
                        f"{MAX_PIXELS:,})")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    try:
        from .server import serve
    except ImportError as e:
        raise ArtcapError(f"the web server needs the serve extra ({e.name} is missing): pip install 'artcap[serve]'") from None
    serve(args.model, host=args.host, port=args.port, backend=args.backend,
          max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels)
    return 0


# ---- main ---------------------------------------------------------------------------------------

class _OneLineParser(argparse.ArgumentParser):
    """A command-line mistake is one line, like every other user error (argparse would print the usage too)."""

    def error(self, message: str):
        command = self.prog.removeprefix("artcap").strip()
        self.exit(2, f"artcap: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="artcap", description="Describe artworks in words.")
    parser.add_argument("--version", action="version", version=f"artcap {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _subcommands():
        add(sub)
    for command in sub.choices.values():  # options every command takes, before or after its name
        command.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                             help="no progress bars or info messages")
        command.add_argument("--threads", type=settings.Bounded(int, settings.threads_spec(), "threads"), default=None,
                             help="torch threads (default: torch's, one per core)")
        if command.prog.split()[-1] in ("caption", "features", "evaluate", "compare", "serve"):
            command.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                                 help="what runs the image network: auto = ONNX Runtime on a CPU when it is "
                                      "installed and its export checks out, else torch")
    return parser


def _subcommands():
    from .compare import add_compare_parser
    from .evaluate import add_evaluate_parser
    from .experiment import add_experiment_parser
    from .hub import add_push_parser

    return [add_caption_parser, add_models_parser, add_features_parser, add_train_parser, add_evaluate_parser,
            add_compare_parser, add_experiment_parser, add_config_parser, add_serve_parser, add_push_parser]


def main(argv: list[str] | None = None) -> int:
    # Torch's OpenMP threads spin while they wait; on a busy machine that costs 10x in speed (measured:
    # beam-5 decoding 2-3 vs ~200 images/s). Before torch is imported; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a usage error (one line, said already), --help or --version: its exit code
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    _setup_logging(args.quiet)
    try:
        with guarded_stdout():  # stdout on a full disk, past a file-size limit or closed: one line
            _set_threads(args.threads)
            return int(args.func(args) or 0)
    except StdoutWriteError as e:  # the output is incomplete, like a job with failed images: exit code 1
        print(f"artcap: error: {e}", file=sys.stderr)
        return 1
    except ArtcapError as e:
        print(f"artcap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("artcap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`artcap caption ... | head`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
