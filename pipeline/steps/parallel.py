"""A study's trainings side by side: up to ``parallel`` train processes at once, each its own run.

Each training is the ``train`` entry point in a process of its own, attached (through
``MLFLOW_RUN_ID``) to a run nested under the study run, exactly as ``mlflow run -e train`` attaches
one. Where there are GPUs each process gets its own (``nproc`` of them under torchrun); on a CPU
machine the processes share the cores, ``cores / parallel`` threads each.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pipeline.config import TrainConfig, to_dict
from pipeline.errors import RetinaFlowError
from pipeline.tracking import runs

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
TAIL_LINES = 40  # of a failed training's output, in the study's error


@dataclass(frozen=True)
class TrainJob:
    name: str  # the nested run's name
    config: TrainConfig


@dataclass
class _Running:
    job: TrainJob
    run_id: str
    process: subprocess.Popen
    reader: threading.Thread  # relays its output
    tail: deque[str]  # the last lines of its output


def device_groups(parallel: int, nproc: int) -> list[str | None]:
    """One entry per slot: the CUDA_VISIBLE_DEVICES of that slot's process, or None on a CPU machine.

    A slot holds ``nproc`` GPUs (a torchrun training); there are never more slots than GPU groups.
    """
    if not torch.cuda.is_available():
        return [None] * parallel
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    groups = [",".join(devices[i:i + nproc]) for i in range(0, len(devices) - nproc + 1, nproc)]
    if len(groups) < parallel:
        log.warning("parallel=%d asks for more trainings at once than there are GPU groups (%d GPUs, %d each): "
                    "running %d at once", parallel, len(devices), nproc, max(len(groups), 1))
    return groups[:parallel] or [None]


def threads_per_process(slots: int) -> str | None:
    """Intra-op threads per training on a CPU machine: the cores shared out (None: the user chose)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return str(max(1, torch.get_num_threads() // slots))


def train_in_parallel(jobs: list[TrainJob], parallel: int) -> list[str]:
    """Runs every job, at most ``parallel`` at once, each in a run nested under the active run.

    Returns:
        The jobs' run ids, in the order of ``jobs``.

    Raises:
        RetinaFlowError: naming each training that failed, with the end of its output, once all
            the others have finished (their runs stay, FINISHED).
    """
    slots = device_groups(parallel, jobs[0].config.nproc if jobs else 1)
    threads = threads_per_process(len(slots)) if slots[0] is None else None
    pending, running, done = list(jobs), {}, {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="retina-flow-parallel-") as folder:
        try:
            while pending or running:
                for slot in [s for s in range(len(slots)) if s not in running]:
                    if not pending:
                        break
                    job = pending.pop(0)
                    running[slot] = _start(job, Path(folder), slots[slot], threads)
                for slot, started in list(running.items()):
                    if started.process.poll() is None:
                        continue
                    started.reader.join()
                    del running[slot]
                    done[started.job.name] = started.run_id
                    if started.process.returncode != 0:
                        runs.fail_if_unfinished(started.run_id)
                        failures.append(f"{started.job.name} (run {started.run_id}) exited with "
                                        f"{started.process.returncode}:\n" + "".join(started.tail))
                time.sleep(POLL_SECONDS)
        finally:
            for started in running.values():  # interrupted: no training outlives the study
                started.process.terminate()
                started.process.wait()
                runs.fail_if_unfinished(started.run_id)
    if failures:
        raise RetinaFlowError(f"{len(failures)} of {len(jobs)} trainings failed:\n" + "\n".join(failures))
    return [done[job.name] for job in jobs]


def _start(job: TrainJob, folder: Path, devices: str | None, threads: str | None) -> _Running:
    """The job's nested run, and the ``train`` entry point attached to it in a process of its own."""
    run_id = runs.create_child_run(job.name, "train")
    config_file = folder / f"{job.name}.yaml"
    config_file.write_text(yaml.safe_dump({"train": to_dict(job.config)}, sort_keys=False))
    env = {**os.environ, "MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": runs.current_uri()}
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli.train", "--config", str(config_file)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    log.info("training %s in process %d (run %s%s)", job.name, process.pid, run_id,
             f", CUDA_VISIBLE_DEVICES={devices}" if devices is not None else "")
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=_relay, args=(process, job.name, tail), daemon=True)
    reader.start()
    return _Running(job, run_id, process, reader, tail)


def _relay(process: subprocess.Popen, name: str, tail: deque[str]) -> None:
    """Copies a training's output to ours, each line prefixed with its name, keeping the last lines."""
    for line in process.stdout:
        tail.append(line)
        sys.stderr.write(f"[{name}] {line}")
