"""Grading on Spark with MLflow: the grader as a ``mlflow.pyfunc.spark_udf`` whose result is the
prediction columns as one struct."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow

from pipeline.photo_grader import PREDICTION_COLUMNS, PROBABILITY_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The prediction columns' Spark types (the served model's output).
_SPARK_TYPES = {"predicted_grade": "long", **{column: "double" for column in PROBABILITY_COLUMNS},
                "p_referable": "double", "referable": "boolean", "gradable": "boolean", "ungradable_reason": "string"}
RESULT_TYPE = ", ".join(f"{column} {_SPARK_TYPES[column]}" for column in PREDICTION_COLUMNS)


def grading_udf(spark: SparkSession, model_uri: str, env_manager: str = "local"):
    """The grader at ``model_uri`` as a Spark UDF taking ``struct(image)``; ``env_manager`` as
    ``mlflow.pyfunc.spark_udf`` (``local``: the workers have the packages; ``virtualenv`` or
    ``conda``: each builds the model's own environment)."""
    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT_TYPE, env_manager=env_manager)
