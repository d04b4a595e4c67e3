"""The served grader over HTTP: round-trip time for 1 and 32 photos, and agreement with predict.

Starts a real ``mlflow models serve`` for a logged or registered grader, posts raw photo bytes as
the README shows clients to, and compares the answers with the grader run in this process (what
``predict`` does). Run by hand after ``make demo``:

    python -m benchmarks.serving --model_uri models:/dr-resnet@champion --photos data/raw/images
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import machine, print_table, write_json
from pipeline.photo_grader import PROBABILITY_COLUMNS
from pipeline.tracking import registry, runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, photos: list[bytes]) -> tuple[float, pd.DataFrame]:
    body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(p).decode()] for p in photos]}}
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, pd.DataFrame(answer["predictions"])


def serve(model_uri: str, port: int, log: Path) -> subprocess.Popen:
    # The server starts uvicorn by name: this interpreter's environment must come first on PATH.
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "w") as out:
        return subprocess.Popen([str(Path(venv_bin) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                                 "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"mlflow models serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the model server did not answer within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_uri", default="models:/dr-resnet@champion")
    parser.add_argument("--photos", default="data/raw/images", help="a folder of raw photos")
    parser.add_argument("--ids", default="", help="an image-id CSV (e.g. data/raw/test_img.csv): compare on these")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs.configure()
    folder = Path(args.photos)
    paths = ([folder / f"{image_id}.jpeg" for image_id in pd.read_csv(args.ids, header=None, dtype=str)[0]]
             if args.ids else sorted(folder.iterdir())[:32])
    photos = [path.read_bytes() for path in paths]
    grader = registry.load_model(args.model_uri).grader
    in_process = grader.grade_photos(photos)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        process = serve(args.model_uri, port, log)
        try:
            startup = wait_until_up(url, process, log)
            post(url, photos[:1])  # the first request loads lazily initialised parts
            rows = []
            for count in (1, min(32, len(photos))):
                times = [post(url, photos[:count])[0] for _ in range(args.repeats)]
                rows.append({"photos": count, "median_s": statistics.median(times), "min_s": min(times),
                             "photos_per_s": count / statistics.median(times)})
            _, served = post(url, photos)
        finally:
            process.terminate()
            process.wait(timeout=30)
    difference = np.abs(served[PROBABILITY_COLUMNS].to_numpy() - in_process[PROBABILITY_COLUMNS].to_numpy())
    parity = {"photos": len(photos), "grades_differing": int((served["predicted_grade"] != in_process["predicted_grade"]).sum()),
              "max_abs_probability_difference": float(difference.max())}
    info = machine()
    print(f"processor: {info['processor']} ({info['cpu_cores']} cores, native bf16: {info['native_bf16']}); "
          f"model server up in {startup:.1f} s")
    print_table(f"POST /invocations round trip, {args.model_uri} ({args.repeats} repeats)", rows)
    print_table("served vs in-process grader (what predict runs)", [parity])
    write_json("serving", {"model_uri": args.model_uri, "startup_s": startup, "round_trip": rows, "parity": parity})


if __name__ == "__main__":
    main()
