"""Speed of captioning a IIIF manifest served from 127.0.0.1 beside the folder job on the same images.

    PYTHONPATH=src python benchmarks/bench_iiif.py --n 200 [--model fast] [--rounds 2]

Three ways over the same N paintings (artemis-mini), each timed on a warm model, interleaved per round:
  folder   caption_collection over a folder of the files (the baseline)
  iiif     caption_iiif over a manifest whose canvases point at the same files (full-size images over HTTP)
  level0   the same through a level-0 Image API tile set: each image fetched at the smallest listed
           size that covers the model's input (fewer bytes to move and decode)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the loopback publisher

from artcap.captioner import Captioner  # noqa: E402
from artcap.collection import caption_collection  # noqa: E402
from artcap.iiif_job import caption_iiif  # noqa: E402
from iiif_loopback import Publisher, canvas, level0_tiles, manifest  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "artemis-mini" / "wikiart"


def prepare(root: Path, paths: list[Path], publisher: Publisher) -> tuple[Path, str, str]:
    folder = root / "www" / "img"
    folder.mkdir(parents=True)
    plain, tiled = [], []
    for i, path in enumerate(paths):
        shutil.copyfile(path, folder / f"{i:04d}.jpg")
        plain.append(canvas(publisher, i, publisher.url(f"img/{i:04d}.jpg"), manifest="plain"))
        service = level0_tiles(publisher, f"p{i:04d}", path, scales=(4, 2, 1))
        tiled.append(canvas(publisher, i, None, service=service, size=(0, 0), manifest="tiled"))
    return folder, manifest(publisher, "plain", plain), manifest(publisher, "tiled", tiled)


def wait_for(url: str, seconds: float = 10) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    paths = sorted(DATA.rglob("*.jpg"))[:args.n]
    captioner = Captioner.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "www").mkdir()
        publisher = Publisher(root / "www")
        folder, plain, tiled = prepare(root, paths, publisher)
        # Serve from another process, as a museum's server would be: not competing for this one's GIL.
        publisher.close()
        port = publisher.base.rsplit(":", 1)[1]
        server = subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1",
                                   "--directory", str(root / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(publisher.url("plain/manifest.json"))
            captioner.caption(paths[:4])  # warm up
            rates: dict[str, list[float]] = {"folder": [], "iiif": [], "level0": []}
            for n in range(args.rounds):
                for name, run in [("folder", lambda: caption_collection(captioner, [folder], root / f"f{n}.jsonl",
                                                                        progress=False)),
                                  ("iiif", lambda: caption_iiif(captioner, plain)),
                                  ("level0", lambda: caption_iiif(captioner, tiled))]:
                    started = time.perf_counter()
                    summary = run()
                    assert not summary.errors, summary.errors[:3]
                    rates[name].append(len(paths) / (time.perf_counter() - started))
        finally:
            server.terminate()
            server.wait()
    print(f"{len(paths)} paintings, model {captioner.model_id} ({captioner.runner.name}), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; images/s, median of {args.rounds} round(s):")
    for name, values in rates.items():
        print(f"  {name:7} {statistics.median(values):6.1f} images/s  ({statistics.median(values) / statistics.median(rates['folder']):.2f}x the folder job)")


if __name__ == "__main__":
    main()
