"""The Spark engine and DataFrame API on a real local Spark (pyspark from PyPI, master local[2]):
rows equal the local engine's (fp32) for hostile Unicode, rejects are kept, a driver crash
resumes to identical rows, and an executor that cannot load the bundle is one clear error. One
Spark session for the module (its JVM takes seconds to start)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import DOCS, build_corpus, progress_events, write_bad_inputs, write_jsonl, write_shards
from test_annotate import Crash, assert_complete, manifest_of

import ner_batch.manifest as manifest_module
from ner_batch.cli import cli

pyspark = pytest.importorskip("pyspark", reason="the [spark] extra (pyspark) is not installed")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java 17 or 21 (make install-java)", allow_module_level=True)

import ner_batch.spark as spark_module  # noqa: E402
from ner_batch.spark import annotate, rejects_of, spans_of  # noqa: E402

KEY = ["doc_id", "start", "end", "label", "text", "score", "model"]
HOSTILE = [
    "Zoë Ångström met José Müller in Zürich .",
    "e\u0301 combining marks: Le\u0301on visited Orle\u0301ans .",
    "emoji 👩‍👩‍👧 family 🇫🇷 in Paris 🗼 with John Smith .",
    "RTL \u202eevil\u202c text: مرحبا Mohammed in Cairo .",
    "CJK 東京 and 北京 with 習近平 .",
    "zero\u200bwidth\u200d joiners and \ufeffBOM inside",
    "tabs\tand\r\nwindows line ends\nMary Jones\n\nin London",
    "",
    " " * 50,
    "a " * 600 + "very long document about Angela Merkel in Berlin",
]


@pytest.fixture(scope="module")
def spark():
    session = spark_module.session("local[2]")
    yield session
    session.stop()


def texts(n: int = 300) -> list[str]:
    base = HOSTILE + DOCS
    return [f"{base[i % len(base)]} #{i}" if i % 7 else base[i % len(base)] for i in range(n)]


def invoke(*arguments):
    return CliRunner().invoke(cli, ["--log-format", "json", *map(str, arguments)])


def local_rows(tiny_bundle, corpus: Path, out: Path) -> list[dict]:
    result = invoke("annotate", corpus, out, "--model", tiny_bundle, "--variant", "fp32")
    assert result.exit_code == 0, result.output
    return sorted_rows(pq.read_table(out).to_pylist())


def sorted_rows(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(r[k] for k in KEY) for r in rows)


def test_dataframe_rows_equal_annotate(spark, tiny_bundle, tmp_path):
    records = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts())]
    corpus = write_jsonl(tmp_path / "docs.jsonl", records)
    expected = local_rows(tiny_bundle, corpus, tmp_path / "local.parquet")
    df = spark.createDataFrame(
        [*records, {"id": "nothing", "text": None}], "id string, text string"
    )
    tagged = annotate(df, str(tiny_bundle), variant="fp32")
    got = [row.asDict() for row in spans_of(tagged).collect()]
    assert expected and sorted_rows(got) == expected
    assert {r["source"] for r in got} == {"spark"}
    assert [r.asDict() for r in rejects_of(tagged).collect()] == [
        {"source": "spark", "doc_id": "nothing", "reason": "no text (null)"}
    ]
    assert spans_of(tagged).schema.simpleString() == (
        "struct<doc_id:string,source:string,start:bigint,end:bigint,label:string,text:string,"
        "score:float,model:string>"
    )


def test_text_that_is_not_utf8_is_a_reject(spark, tiny_bundle):
    from pyspark.sql import functions as F

    df = spark.createDataFrame(
        [("ok", bytearray(b"John Smith in Paris")), ("bad", bytearray(b"\xff\xfe Paris"))],
        "id string, raw binary",
    ).select("id", F.col("raw").cast("string").alias("text"), F.lit("feed").alias("feed"))
    tagged = annotate(df, str(tiny_bundle), variant="fp32", source_col="feed")
    rejects = [r.asDict() for r in rejects_of(tagged).collect()]
    assert rejects == [
        {
            "source": "feed",
            "doc_id": "bad",
            "reason": "text is not valid UTF-8 (invalid start byte at byte 0)",
        }
    ]


def test_unknown_columns_are_refused_before_any_job(spark, tiny_bundle):
    from ner_batch.errors import OptionError

    df = spark.createDataFrame([("a", "Paris")], "key string, body string")
    with pytest.raises(OptionError, match=r"text_col 'text' is not a column .*\['key', 'body'\]"):
        annotate(df, str(tiny_bundle))


def test_the_engine_writes_the_local_engines_output(spark, tiny_bundle, tmp_path):
    """Default options but the variant (fp32: exact), hostile input: every format, gz, poison
    documents (rejects), through the real CLI."""
    corpus = build_corpus(tmp_path)
    write_bad_inputs(corpus / "bad")
    (corpus / "bad" / "e_truncated.jsonl.gz").unlink()  # a fatal read error ends either run
    (corpus / "bad" / "f_not.parquet").unlink(missing_ok=True)
    local = tmp_path / "local.parquet"
    expected = local_rows(tiny_bundle, corpus, local)
    out = tmp_path / "spark.parquet"
    result = invoke(
        "annotate", corpus, out, "--model", tiny_bundle, "--variant", "fp32", "--engine", "spark"
    )
    assert result.exit_code == 0, result.output
    assert sorted_rows(pq.read_table(out).to_pylist()) == expected
    assert pq.read_table(out).equals(pq.read_table(local))  # same order, same parts
    assert pq.read_table(out / "_rejects").equals(pq.read_table(local / "_rejects"))
    manifest = assert_complete(out)
    assert manifest["counts"]["rejected"] > 0
    assert manifest_of(out)["settings"]["engine"] == "any"  # fp32: either engine resumes it


def test_a_killed_driver_resumes_to_identical_rows(spark, tiny_bundle, tmp_path, monkeypatch):
    records = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts(120))]
    corpus = tmp_path / "corpus"
    for shard in range(3):
        write_jsonl(corpus / f"shard{shard}.jsonl", records[shard * 40 : (shard + 1) * 40])
    options = ["--model", tiny_bundle, "--variant", "fp32", "--part-docs", "25"]
    reference = tmp_path / "reference.parquet"
    assert invoke("annotate", corpus, reference, *options).exit_code == 0
    real_write = manifest_module.write_manifest
    calls = []

    def write_manifest(out, manifest):
        calls.append(manifest.documents_done)
        if len(calls) == 3:  # the initial manifest, one part, then killed before the second's
            raise Crash("killed")
        real_write(out, manifest)

    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "write_manifest", write_manifest)
        crashed = CliRunner().invoke(  # --debug: the Crash itself, not an Error: line
            cli,
            ["--debug", "annotate", str(corpus), str(out), *map(str, options), "--engine", "spark"],
        )
    assert isinstance(crashed.exception, Crash)
    assert manifest_of(out)["documents_done"] == 25 and not (out / "_SUCCESS").exists()
    resumed = invoke("annotate", corpus, out, *options, "--engine", "spark")
    assert resumed.exit_code == 0, resumed.output
    done = [json.loads(line) for line in resumed.output.splitlines() if '"event": "done"' in line]
    assert done and done[0]["documents_this_run"] == 95
    assert pq.read_table(out).equals(pq.read_table(reference))


def test_an_executor_that_cannot_load_the_bundle_is_one_clear_error(
    spark, tiny_bundle, tmp_path, monkeypatch
):
    """The driver checks the bundle; the executors read it again, here from a path they do not
    have (as when the bundle is on the driver's disk only)."""
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "John Smith"}])
    real_spec = spark_module.tagger_spec

    def elsewhere(plan, threads):
        return {**real_spec(plan, threads), "model": str(tmp_path / "not-on-the-executors")}

    monkeypatch.setattr(spark_module, "tagger_spec", elsewhere)
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli,
        ["--log-format", "text", "annotate", str(corpus), str(out), "--model", str(tiny_bundle)]
        + ["--variant", "fp32", "--engine", "spark"],
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert errors[0].startswith("Error: on Spark executor ")
    assert f"model bundle {tmp_path / 'not-on-the-executors'} does not exist" in errors[0]
    assert not (out / "_SUCCESS").exists()


def test_spark_options_need_the_spark_engine(tmp_path):
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "John Smith"}])
    result = invoke("annotate", corpus, tmp_path / "out", "--spark-master", "local[2]")
    assert result.exit_code == 2
    assert "--spark-master needs --engine spark" in result.output


def test_sigterm_commits_what_arrived_and_the_same_command_resumes(
    spark, tiny_bundle, tmp_path, monkeypatch
):
    """SIGTERM (cron, Airflow) reaches the driver's stop flag even after Spark started, which
    installs its own handlers: what has come back is committed and the run stops."""
    import os
    import signal

    import ner_batch.remote as remote
    from ner_batch.errors import Interrupted

    records = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts(90))]
    corpus = tmp_path / "corpus"
    for shard in range(3):
        write_jsonl(corpus / f"shard{shard}.jsonl", records[shard * 30 : (shard + 1) * 30])
    options = ["--model", tiny_bundle, "--variant", "fp32", "--part-docs", "20"]
    reference = tmp_path / "reference.parquet"
    assert invoke("annotate", corpus, reference, *options).exit_code == 0
    write_batch = remote.write_batch

    def write_then_sigterm(committer, batch):
        write_batch(committer, batch)
        os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "out.parquet"
    with monkeypatch.context() as patch:
        patch.setattr(remote, "write_batch", write_then_sigterm)
        stopped = CliRunner().invoke(
            cli,
            ["--debug", "annotate", str(corpus), str(out), *map(str, options), "--engine", "spark"],
        )
    assert isinstance(stopped.exception, Interrupted), stopped.output
    assert manifest_of(out)["documents_done"] == 30  # the first file's block, committed
    resumed = invoke("annotate", corpus, out, *options, "--engine", "spark")
    assert resumed.exit_code == 0, resumed.output
    assert pq.read_table(out).equals(pq.read_table(reference))


def test_progress_events_come_as_the_executors_results_do(spark, tiny_bundle, tmp_path):
    """The driver knows documents and input bytes as blocks come back: `progress` events with
    rising percentages to 100, the rejects counted (issue 25's point 4 on Spark)."""

    from ner_batch.annotate import AnnotateConfig
    from ner_batch.annotate import annotate as annotate_files
    from ner_batch.readers import ReadOptions

    corpus = write_shards(tmp_path / "corpus", texts(60))
    with progress_events() as events:
        config = AnnotateConfig(
            [str(corpus)],
            str(tmp_path / "out.parquet"),
            model=str(tiny_bundle),
            variant="fp32",
            engine="spark",
            read=ReadOptions(),
        )
        summary = annotate_files(config, progress_every=0.000001)
    percents = [e["percent"] for e in events]
    assert len(percents) >= 4 and percents == sorted(percents) and percents[-1] == 100.0
    assert events[-1]["documents"] == summary["documents"] == 244
    assert events[-1]["rejected"] == summary["rejected"] == 4
