r"""The README's main command at the paper's size, timed from outside, stopped by a SIGTERM.

    python benchmarks/real_size_sigterm.py --workdir /tmp/real/run --data-dir /tmp/real/data [--after 2]

Writes fake PathMNIST files shaped like the real ones (28 px; 89,996 / 10,004 / 7,180 images)
into --data-dir unless they are there, runs `train.py --config=configs/medmnist.py` on them
(MedMamba-T, 224 px, batch 128, the micro-batch count chosen by train.py), prints every line
and bar redraw it writes with the seconds since the start, sends SIGTERM once the bar has
shown step --after, and reports how long after the signal the run exited and with what status.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"train": 89_996, "val": 10_004, "test": 7_180}


def write_fake_pathmnist(data_dir: str) -> None:
    path = os.path.join(data_dir, "pathmnist.npz")
    if os.path.exists(path):
        return
    os.makedirs(data_dir, exist_ok=True)
    rng, arrays = np.random.default_rng(0), {}
    for split, n in SPLITS.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1)).astype(np.uint8)
    np.savez(path, **arrays)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--after", type=int, default=2, help="the bar's step after which SIGTERM is sent")
    args = parser.parse_args()
    write_fake_pathmnist(args.data_dir)
    began, sent = time.time(), []
    proc = subprocess.Popen([sys.executable, "train.py", "--config=configs/medmnist.py", f"--workdir={args.workdir}",
                             f"--config.data_dir={args.data_dir}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    shown = re.compile(r"\| *(\d+)/\d+ ")

    def echo() -> None:
        line = ""
        for char in iter(lambda: proc.stdout.read(1), ""):
            if char not in "\r\n":
                line += char
                continue
            if line.strip():
                print(f"[{time.time() - began:7.1f}s] {line}", flush=True)
                step = shown.search(line)
                if not sent and step and int(step.group(1)) >= args.after:
                    sent.append(time.time())
                    print(f"[{sent[0] - began:7.1f}s] >>> SIGTERM", flush=True)
                    proc.send_signal(signal.SIGTERM)
            line = ""

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    status = proc.wait()
    reader.join(timeout=5)
    after = f"; {time.time() - sent[0]:.1f}s after SIGTERM" if sent else ""
    print(f"exit status {status} at {time.time() - began:.1f}s{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
