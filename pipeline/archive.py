"""An archive of photos as a Spark DataFrame, for grading on a cluster (``steps.grade_archive``).

Photos are read with Spark's ``binaryFile`` source (one row per file: ``path``, ``length``,
``content``), kept where the extension is a photo's (``photos.PHOTO_EXTENSIONS``, any case), and
handed to the grader base64-encoded, as the served model takes them. No MLflow here.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from pipeline.data.photos import PHOTO_EXTENSIONS
from pipeline.photo_grader import IMAGE_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Photos per Arrow batch sent to a Python worker: a batch of camera photos is held in memory
# there at once (Spark's default, 10,000 rows, would be ~30 GB of 3 MB photos).
PHOTOS_PER_BATCH = 64


def spark_session(master: str, app_name: str = "retina-flow grade_archive") -> SparkSession:
    """A Spark session on ``master`` (``local[*]``, ``spark://host:7077``, ``yarn``, ...; empty:
    the one ``spark-submit --master`` gave).

    Raises:
        ImportError: pyspark is not installed (``pip install '.[spark]'``).
    """
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        # Local Python workers run this interpreter, with this project's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (SparkSession.builder.appName(app_name)
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(PHOTOS_PER_BATCH))
               # base64() in one line: graders logged before line breaks were accepted refuse them.
               .config("spark.sql.chunkBase64String.enabled", "false"))
    if master:  # empty: the master spark-submit (or the cluster's notebook) set
        builder = builder.master(master)
    if master.startswith("local"):
        builder = builder.config("spark.ui.enabled", "false")
    return builder.getOrCreate()


def read_photos(spark: SparkSession, source: str) -> DataFrame:
    """``path``, ``id`` (the file name without extension) and ``image`` (base64 photo bytes) of every
    photo file in a folder (recursively) or matching a glob (``/archive/2019/*/*.jpeg``)."""
    from pyspark.sql import functions as F

    reader = spark.read.format("binaryFile")
    if not any(char in source for char in "*?[{"):
        reader = reader.option("recursiveFileLookup", "true")
    files = reader.load(source)
    extension = F.lower(F.regexp_extract("path", r"\.([^./]+)$", 1))
    return (files.where(extension.isin(*PHOTO_EXTENSIONS))
            .select("path", F.regexp_extract("path", r"([^/]+)\.[^./]+$", 1).alias("id"),
                    F.base64("content").alias(IMAGE_COLUMN)))


def empty_photo_files(spark: SparkSession, source: str) -> list[str]:
    """The photo files of ``source`` that hold no byte: Spark's file sources skip them, so the
    archive lists them itself (through Hadoop's file system, as Spark reads any storage)."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(source)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    statuses = fs.globStatus(path) or []
    empty = []
    for status in statuses:
        if status.isDirectory():
            files = fs.listFiles(status.getPath(), True)
            while files.hasNext():
                found = files.next()
                if found.getLen() == 0:
                    empty.append(found.getPath().toString())
        elif status.getLen() == 0:
            empty.append(status.getPath().toString())
    return [name for name in empty if name.rsplit(".", 1)[-1].lower() in PHOTO_EXTENSIONS]

