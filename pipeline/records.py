"""What later steps know of a finished train run: plain data, read back by ``tracking.readback``.

Defined apart from the tracking package so that the comparison table and its figures can be built
(and tested) from records without importing MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.catalog import LAB_RECIPE, Configuration
from pipeline.config import parse_bool


@dataclass
class TrainRunRecord:
    """One train run: its params and final metrics as logged, and the per-epoch curves."""

    run_id: str
    run_name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(epoch, value)]

    @property
    def configuration(self) -> Configuration:
        """The cell of the study's grid this run belongs to (runs logged before recipes: the labs')."""
        return Configuration(self.params["model"], parse_bool(self.params["pretrained"], "pretrained"),
                             self.params.get("recipe", LAB_RECIPE))
