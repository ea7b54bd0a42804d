"""Run every benchmark in bench/ in turn with its defaults (`make bench`)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_canon.py", "bench_count.py", "bench_vocab.py", "bench_captions.py", "bench_sources.py", "bench_sample.py",
           "bench_loader.py", "bench_train.py", "bench_probe.py", "bench_platt.py", "bench_fairness.py"]

if __name__ == "__main__":
    failed = []
    for name in BENCHES:
        if not (HERE / name).is_file():
            continue
        print(f"== {name}", flush=True)
        if subprocess.call([sys.executable, str(HERE / name)]) != 0:
            failed.append(name)
    sys.exit(1 if failed else 0)
