"""The ``preprocess`` step: a raw set in its own layout -> processed dataset, its counts logged."""

from __future__ import annotations

import pandas as pd

from pipeline.config import PreprocessConfig, to_dict, validate_preprocess_config
from pipeline.data.preprocess import preprocess
from pipeline.tracking import artifacts, runs
from pipeline.tracking.sink import metric_sink


def run_preprocess(cfg: PreprocessConfig) -> dict[str, object]:
    """Builds (or reuses) the processed cache; logs the images per split and any skipped photos."""
    validate_preprocess_config(cfg)
    runs.log_config(to_dict(cfg), to_dict(cfg))
    summary = preprocess(cfg.raw_dir, cfg.data_dir, image_size=cfg.image_size, image_dir=cfg.image_dir,
                         val_fraction=cfg.val_fraction, seed=cfg.seed, num_workers=cfg.num_workers,
                         on_bad_image=cfg.on_bad_image, max_bad_fraction=cfg.max_bad_fraction, enhance=cfg.enhance,
                         layout=cfg.layout, test_fraction=cfg.test_fraction, role=cfg.role)
    counts = summary["counts"]
    metric_sink().log_summary({f"{split}_images": sum(grades) for split, grades in counts.items()}
                              | {f"{split}_ungradable_labels": n for split, n in summary["ungradable"].items() if n}
                              | {"preprocess_seconds": summary["seconds"],
                                 "skipped_images": len(summary["skipped_images"])})
    if summary["skipped_images"]:
        artifacts.log_text(pd.DataFrame(summary["skipped_images"]).to_csv(index=False), "skipped_images.csv")
    artifacts.log_dict(summary, "dataset.json")
    return summary
