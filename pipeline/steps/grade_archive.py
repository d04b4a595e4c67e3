"""The ``grade_archive`` step: every photo of a folder or glob graded on Spark with the grader as
``mlflow.pyfunc.spark_udf`` (the ONNX grader where one was exported), one parquet row per photo."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.archive import empty_photo_files, read_photos, spark_session
from pipeline.catalog import UNREADABLE
from pipeline.data.photos import PHOTO_EXTENSIONS
from pipeline.errors import ConfigError, DataError
from pipeline.photo_grader import PREDICTION_COLUMNS, PROBABILITY_COLUMNS, UNGRADED
from pipeline.tracking import registry, runs, spark_grading, tags
from pipeline.tracking.sink import metric_sink

log = logging.getLogger(__name__)

ONNX_ALIAS_SUFFIXES = ("-onnx", "-onnx-int8")  # what ``export`` names its versions' aliases, preferred in this order
OUTPUT_COLUMNS = ("path", "id", *PREDICTION_COLUMNS, "model_version")
ENV_MANAGERS = ("local", "virtualenv", "conda", "uv")


def archive_grader(model_uri: str) -> tuple[str, str]:
    """(model URI, a label of the version) of the grader to use: for ``models:/<name>@<alias>``, the
    ONNX export of that alias where ``export`` made one, else the URI as given."""
    uri = registry.model_uri_of(model_uri)
    name, alias = registry.registered_name_and_alias(uri)
    if name and alias:
        if not alias.endswith(ONNX_ALIAS_SUFFIXES):
            for suffix in ONNX_ALIAS_SUFFIXES:
                version = registry.version_of_alias(name, alias + suffix)
                if version:
                    return f"models:/{name}@{alias}{suffix}", f"{name} v{version}"
        version = registry.version_of_alias(name, alias)
        return uri, f"{name} v{version}" if version else uri
    return uri, uri


def run_grade_archive(model_uri: str, source: str, output: str, spark_master: str = "local[*]",
                      env_manager: str = "local", overwrite: bool = False) -> dict[str, float]:
    """Grades the archive into parquet at ``output``; returns the counts logged as metrics.

    Raises:
        ConfigError: ``output`` exists (without ``overwrite``), or pyspark is missing.
        DataError: ``source`` holds no photo.
    """
    if env_manager not in ENV_MANAGERS:
        raise ConfigError(f"env_manager={env_manager!r} is not supported; choose one of {', '.join(ENV_MANAGERS)}")
    if Path(output).exists() and not overwrite:
        raise ConfigError(f"output {output} exists; choose another folder or pass overwrite=true")
    uri, version = archive_grader(model_uri)
    runs.log_params({"model_uri": model_uri, "graded_with": uri, "input": source, "output": output,
                     "spark_master": spark_master, "env_manager": env_manager})
    runs.set_tags({tags.MODEL_URI: uri})
    try:
        from pyspark.sql import functions as F
        from pyspark.errors import AnalysisException
    except ImportError:
        raise ConfigError("grade_archive needs pyspark (pip install '.[spark]') and Java 17+") from None
    spark = spark_session(spark_master)
    try:
        try:
            photos = read_photos(spark, source)
            if photos.limit(1).count() == 0:
                raise DataError(f"input {source} holds no photos ({', '.join(PHOTO_EXTENSIONS)}, any case)")
        except AnalysisException as exc:
            raise DataError(f"input {source}: {str(exc).splitlines()[0]}") from None
        grader = spark_grading.grading_udf(spark, uri, env_manager)
        graded = (photos.select("path", "id", grader(F.struct("image")).alias("graded"))
                  .select("path", "id", "graded.*"))
        empty = empty_photo_files(spark, source)
        if empty:  # no byte to read: refused as unreadable without a grader (Spark's sources skip them)
            refused = spark.createDataFrame([(name, name.rsplit("/", 1)[-1].rsplit(".", 1)[0]) for name in empty],
                                            "path string, id string")
            for column in PREDICTION_COLUMNS:
                value = {"predicted_grade": F.lit(UNGRADED).cast("long"), "gradable": F.lit(False),
                         "ungradable_reason": F.lit(UNREADABLE)}.get(column, F.lit(None))
                refused = refused.withColumn(column, value)
            graded = graded.unionByName(refused, allowMissingColumns=True)
        # As in predict's CSV and the served JSON: no referable call for an ungradable photo, and
        # no probability where the network never saw it (the UDF's result turns None into False, NaN).
        graded = graded.withColumn("referable", F.when(F.col("gradable"), F.col("referable")))
        for column in (*PROBABILITY_COLUMNS, "p_referable"):
            graded = graded.withColumn(column, F.when(~F.isnan(column), F.col(column)))
        graded = graded.withColumn("model_version", F.lit(version))
        started = time.perf_counter()
        graded.select(*OUTPUT_COLUMNS).write.mode("overwrite" if overwrite else "errorifexists").parquet(output)
        seconds = time.perf_counter() - started
        totals = spark.read.parquet(output).agg(
            F.count("*").alias("photos"), F.sum((~F.col("gradable")).cast("int")).alias("ungradable"),
            F.sum(F.col("referable").cast("int")).alias("referable")).first()
    finally:
        spark.stop()
    photos_count, ungradable = int(totals["photos"]), int(totals["ungradable"] or 0)
    figures = {"photos": float(photos_count), "ungradable_fraction": ungradable / photos_count,
               "referable_share": (totals["referable"] or 0) / max(photos_count - ungradable, 1),
               "seconds": seconds, "photos_per_second": photos_count / seconds}
    metric_sink().log_summary(figures)
    log.info("graded %d photos with %s (%s) into %s in %.1f s", photos_count, uri, version, output, seconds)
    return figures
