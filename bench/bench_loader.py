"""Training-stream throughput: swag's loader against bare JPEG decode and torchvision's ImageFolder.

    .venv/bin/python bench/bench_loader.py [--images 4000] [--size 128] [--res 112] [--workers 2]
                                           [--repeat 3] [--threads T] [--profile]

Set-up (not timed): a synthetic world of ``--images`` posts rendered at ``--size`` px in 8 tar shards
(`swag synth`), a vocabulary and a `natural` plan of as many samples as images (`swag vocab build`,
`swag sample run`), the JPEG bytes read into memory, and the same images extracted to an ImageFolder
layout (10 class folders). Every file is read once before timing, so the page cache is warm for all.

Then, on the same images, interleaved ``--repeat`` times (best and median reported), images/s of:
  * bare     PIL ``open(BytesIO(b)).convert("RGB").resize((R, R), BILINEAR)`` over in-memory bytes,
             one process: the floor of any loader (bilinear, as swag's and torchvision's crops use);
  * swag     ``make_loader(StreamConfig(..., resolution=R, loop=False), 64, workers=0)``: tar reading,
             plan join, shuffle buffer, decode + RandomResizedCrop + flip, collate; counts the images
             yielded (a planned image drawn twice is decoded twice);
  * folder   ``ImageFolder`` + RandomResizedCrop(R), RandomHorizontalFlip, PILToTensor in a
             ``DataLoader(batch_size=64, num_workers=0)``;
  * swag/folder with ``--workers`` DataLoader workers (worker start-up included, as in training);
  * swag hdr  the same stream with ``decode="gpu"`` (``data.decode: gpu``), one process: what is left
             to the workers when the GPU decodes (tar, plan join, shuffle, JPEG header, crop draws,
             collate of the encoded bytes); the decode itself then runs on the device, not here.
Ratios are taken within the run (the machine is shared and noisy); the goal is swag >= 0.9 x bare.
Ratios use best-of wall-clock rates (medians in brackets); single-process rows also get a rate by
this process's CPU time, less sensitive to other load (worker rows: wall clock only).
``--threads 1`` runs this process's torch ops (collate's stack) on one thread, as DataLoader workers
do: on a loaded machine two OpenMP threads can stall torch.stack for 10-700 ms a batch.
``--profile`` adds a cProfile of one single-process swag epoch (top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from swagcli.train.data import StreamConfig, make_loader  # noqa: E402

SWAG = str(Path(sys.executable).with_name("swag"))
SHARDS = 8
BATCH = 64


def swag_cli(*args: str) -> None:
    r = subprocess.run([SWAG, *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"swag {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")


def build(tmp: Path, images: int, size: int) -> tuple[list[str], Path]:
    """A small world with only what the benchmark needs, then its vocabulary and a natural plan."""
    sets = [f"image_size={size}", f"images_per_shard={-(-images // SHARDS)}", "group_images=0",
            "downstream_classes=2", "downstream_train_per_class=1", "downstream_val_per_class=1"]
    swag_cli("synth", "--out", str(tmp / "world"), "--posts", str(images), "-j", "2",
             *(x for s in sets for x in ("--set", s)))
    swag_cli("vocab", "build", str(tmp / "world" / "dumps"), "--out", str(tmp / "vocab"),
             "--head-min-images", "30")
    swag_cli("sample", "run", "--vocab", str(tmp / "vocab"), str(tmp / "world" / "dumps"),
             "--out", str(tmp / "plan"), "-m", str(images), "--strategy", "natural")
    return sorted(str(p) for p in (tmp / "world" / "images").glob("*.tar")), tmp / "plan"


def read_jpegs(shards: list[str]) -> list[tuple[str, bytes]]:
    out = []
    for url in shards:
        with tarfile.open(url) as tf:
            for m in tf:
                if m.name.endswith(".jpg"):
                    out.append((m.name[:-4], tf.extractfile(m).read()))
    return out


def extract_folder(jpegs: list[tuple[str, bytes]], root: Path) -> None:
    for i, (key, data) in enumerate(jpegs):
        d = root / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{key}.jpg").write_bytes(data)


def warm(paths) -> None:
    for p in paths:
        Path(p).read_bytes()


# -- the measured passes; each returns the number of images it produced ---------------------------
def bare(jpegs, res: int) -> int:
    for _, b in jpegs:
        Image.open(io.BytesIO(b)).convert("RGB").resize((res, res), Image.BILINEAR)
    return len(jpegs)


def swag_loader(shards, plan, res: int, workers: int, decode: str = "cpu") -> int:
    cfg = StreamConfig(list(shards), str(plan), resolution=res, loop=False, decode=decode)
    return sum(len(b["image"]) for b in make_loader(cfg, batch_size=BATCH, workers=workers))


def image_folder(root: Path, res: int, workers: int) -> int:
    tf = transforms.Compose([transforms.RandomResizedCrop(res), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    ds = datasets.ImageFolder(str(root), transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    return sum(len(x) for x, _ in dl)


def profile_swag(shards, plan, res: int, top: int = 22) -> None:
    pr = cProfile.Profile()
    pr.enable()
    n = swag_loader(shards, plan, res, 0)
    pr.disable()
    st = pstats.Stats(pr)
    total = st.total_tt
    print(f"\ncProfile, one single-process swag epoch ({n} images, {total:.2f} s under the profiler)")
    print(f"  {'own s':>7} {'own %':>6} {'cum s':>7} {'calls':>8}  function")
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (file, line, fn), (_, ncalls, tt, ct, _) in rows:
        where = f"{Path(file).name}:{line}" if line else file
        print(f"  {tt:7.3f} {100 * tt / total:5.1f}% {ct:7.3f} {ncalls:8d}  {fn} ({where})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000, help="posts/images in the world")
    ap.add_argument("--size", type=int, default=128, help="rendered image size (px)")
    ap.add_argument("--res", type=int, default=112, help="crop resolution")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the parallel rows")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats")
    ap.add_argument("--profile", action="store_true", help="cProfile one swag epoch")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads in this process (0: torch's default; workers use 1)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="swag-bench-loader-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        shards, plan = build(tmp, a.images, a.size)
        jpegs = read_jpegs(shards)
        extract_folder(jpegs, tmp / "folder")
        warm([*shards, *(tmp / "folder").rglob("*.jpg"), *(plan / "plan").glob("*")])
        mb = sum(len(b) for _, b in jpegs) / 1e6
        print(f"{len(jpegs):,} JPEGs of {a.size} px ({mb:.1f} MB) in {len(shards)} shards -> {a.res} px; "
              f"set-up {time.perf_counter() - t0:.0f} s (not timed); "
              f"{a.repeat} interleaved repeats, {torch.get_num_threads()} torch threads")
        w = a.workers
        cases = {
            "bare": lambda: bare(jpegs, a.res),
            "swag": lambda: swag_loader(shards, plan, a.res, 0),
            "folder": lambda: image_folder(tmp / "folder", a.res, 0),
            f"swag {w}w": lambda: swag_loader(shards, plan, a.res, w),
            f"folder {w}w": lambda: image_folder(tmp / "folder", a.res, w),
            "swag hdr": lambda: swag_loader(shards, plan, a.res, 0, "gpu"),
        }
        rates: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}  # by this process's CPU time
        counts: dict[str, int] = {}
        names = list(cases)
        for rep in range(a.repeat):
            for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order
                t, c = time.perf_counter(), time.process_time()
                counts[name] = cases[name]()
                rates[name].append(counts[name] / (time.perf_counter() - t))
                cpu[name].append(counts[name] / (time.process_time() - c))
        if a.profile:
            profile_swag(shards, plan, a.res)

    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    inproc = ("bare", "swag", "folder", "swag hdr")  # the CPU-time rate means something for these only
    bcpu = {k: max(cpu[k]) for k in inproc}
    print(f"\n  {'':<12} {'images':>7} {'best img/s':>11} {'median img/s':>13} {'best CPU img/s':>15}   runs")
    for k in cases:
        runs = " ".join(f"{r:.0f}" for r in rates[k])
        c = f"{bcpu[k]:,.0f}" if k in bcpu else "-"
        print(f"  {k:<12} {counts[k]:>7} {best[k]:>11,.0f} {med[k]:>13,.0f} {c:>15}   {runs}")

    def ratio(x: str, y: str) -> str:
        c = f", CPU {bcpu[x] / bcpu[y]:.2f}" if x in bcpu and y in bcpu else ""
        return f"{best[x] / best[y]:.2f} (median {med[x] / med[y]:.2f}{c})"

    print(f"\n  swag / bare            {ratio('swag', 'bare')}   goal >= 0.90")
    print(f"  swag / folder          {ratio('swag', 'folder')}")
    print(f"  swag {w}w / folder {w}w    {ratio(f'swag {w}w', f'folder {w}w')}")
    print(f"  swag {w}w / swag       {ratio(f'swag {w}w', 'swag')}   (speed-up on {w} workers)")
    print(f"  swag hdr / swag        {ratio('swag hdr', 'swag')}   (worker load with decode: gpu)")
    verdict = "meets" if best["swag"] / best["bare"] >= 0.9 else "BELOW"
    print(f"\nloader: swag {best['swag']:,.0f} img/s = {best['swag'] / best['bare']:.2f} x bare decode "
          f"({verdict} the 0.9 goal; by CPU time {bcpu['swag'] / bcpu['bare']:.2f}), "
          f"{best['swag'] / best['folder']:.2f} x ImageFolder; "
          f"{w} workers: {best[f'swag {w}w']:,.0f} img/s = "
          f"{best[f'swag {w}w'] / best[f'folder {w}w']:.2f} x ImageFolder")


if __name__ == "__main__":
    main()
