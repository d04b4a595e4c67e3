"""Entry point ``train``: one ResNet configuration, tracked per epoch, best checkpoint and model logged.

Runs unchanged under ``torchrun --nproc_per_node=N``; with ``--nproc N`` it starts torchrun itself.
``--resume RUN_ID`` (or ``auto``) continues an interrupted run, in the same MLflow run; under
``mlflow run -P resume=...`` too (the run ``mlflow run`` opens then only records the launch).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from pipeline.catalog import config_label, run_name_of
from pipeline.cli import exit_with, imports_done
from pipeline.cli._runner import load_section, run_step, section_parser, setup_logging
from pipeline.config import TrainConfig, coerce_int
from pipeline.errors import ConfigError

log = logging.getLogger("pipeline")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = section_parser("train", "train", __doc__).parse_args(argv)
    if args.nproc is not None and "LOCAL_RANK" not in os.environ:
        try:
            nproc = coerce_int(args.nproc, "nproc", 1)
        except ConfigError:
            nproc = 1  # the run itself reports the bad value, and is marked FAILED
        if nproc > 1 and not args.resume:  # a resume with nproc > 1 is refused inside its run
            return launch_torchrun(nproc, argv)

    # The training stack is imported once this process trains: a torchrun launcher (--nproc) only
    # waits for its ranks, and would hold ~1 GB and ~5 s of CPU of imports for nothing.
    from pipeline.steps.train import load_run_checkpoint, run_train
    from pipeline.tracking import runs

    def body() -> None:
        cfg = load_section(args, "train")
        if cfg.resume:
            saved = load_run_checkpoint(runs.active_run_id(), cfg.checkpoint_dir)
            # The run continues as it began: its own config, not today's command line.
            cfg = dataclasses.replace(TrainConfig(**saved["config"]), resume=cfg.resume,
                                      checkpoint_dir=cfg.checkpoint_dir, keep_checkpoint=cfg.keep_checkpoint)
            outcome = run_train(cfg, resume_from=saved)
        else:
            # `mlflow run . -e train` opens its run under a random name: the study's name for it instead.
            runs.name_if_generated(run_name_of(cfg.model, cfg.pretrained, cfg.recipe))
            outcome = run_train(cfg)
        if outcome is not None:  # rank 0 of a torchrun job, or the only process
            print(f"{config_label(cfg.model, cfg.pretrained, cfg.recipe)}: best epoch {outcome.best_epoch}, "
                  f"{cfg.select_metric} {outcome.selection_score:.3f}, test accuracy {outcome.test_accuracy:.3f}")
            print(f"run {outcome.run_id}, model {outcome.model_uri}")

    return run_step("train", body, existing_run=lambda: resume_target(args), system_metrics=True)


def resume_target(args: argparse.Namespace) -> str | None:
    """The run to continue: ``--resume RUN_ID``, or with ``auto`` the latest unfinished one alike.

    Under ``mlflow run`` (which has opened a run of its own) that launcher run is tagged with it.
    """
    from pipeline.tracking import resume, runs

    wanted = args.resume or ""
    if not wanted:
        return None
    cfg = load_section(args, "train")
    if cfg.nproc > 1:
        raise ConfigError(f"resume={wanted} continues a run in one process; leave nproc at 1 (it was {cfg.nproc})")
    if wanted == "auto":
        run_id = resume.find_resumable_run(dataclasses.asdict(cfg))
        if run_id is None:
            raise ConfigError("resume=auto found no unfinished train run of this configuration in the experiment")
        log.info("resume=auto: continuing run %s", run_id)
    elif runs.run_exists(wanted):
        run_id = wanted
    else:
        raise ConfigError(f"resume={wanted}: no such run on {runs.current_uri()}")
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher and launcher != run_id:
        resume.mark_resume_launcher(launcher, run_id)
    return run_id


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc_per_node=N -m pipeline.cli.train ...``; rank 0 joins MLFLOW_RUN_ID's run."""
    from torch.distributed.run import main as torchrun

    imports_done()
    setup_logging()
    # torchrun's parser would read our --nproc as an abbreviation of its --nproc-per-node.
    rank_argv = strip_option(argv, "--nproc")
    try:
        torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "pipeline.cli.train", *rank_argv])
    except SystemExit as exc:  # torchrun exits on its own; a failed rank surfaces as ChildFailedError
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - torchrun's ChildFailedError carries each rank's failure
        print(f"error: distributed training failed: {exc}", file=sys.stderr)
        return 1
    return 0


def strip_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept


if __name__ == "__main__":
    exit_with(main())
