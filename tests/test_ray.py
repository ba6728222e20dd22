"""The Ray engine on a real local Ray cluster (one for the module: Ray takes ~10 s to start): the
same rows and rejects as the local engine, the CLI, a dead actor, resuming after a driver crash
and after SIGTERM (also across engines), S3 inputs, bundle and output, errors, and options
refused before any cluster starts."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import build_corpus, progress_events, write_bad_inputs, write_parquet, write_shards
from test_annotate import Crash, assert_complete, crashing_documents, manifest_of, rows_of

import ner_batch.annotate as annotate_module
import ner_batch.manifest as manifest_module
import ner_batch.remote as remote
from ner_batch.annotate import AnnotateConfig, Interrupted, RayOptions, annotate
from ner_batch.cli import cli
from ner_batch.errors import BundleError, InputError, MissingExtraError, NerbatchError
from ner_batch.manifest import Manifest
from ner_batch.plan import resume_point
from ner_batch.ray_engine import RayStopFlag, _ray_error
from ner_batch.readers import ReadOptions

# Ray Data's DataContext.copy() touches its own deprecated settings.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


def kill_an_actor_once(marker: str) -> None:
    """Ray worker setup hook: the first `Tagger.predict` that finds `marker` deletes it and ends
    its process, as a lost node or the OOM killer would end an actor in the middle of a batch."""
    from ner_batch.tagger import Tagger

    predict = Tagger.predict

    def predict_or_die(self, encoded):
        try:
            os.unlink(marker)
        except FileNotFoundError:
            return predict(self, encoded)
        os._exit(1)

    Tagger.predict = predict_or_die


def start_s3_server(stack: contextlib.ExitStack) -> dict | None:
    """moto's S3 server on loopback, if moto is installed; returns the environment that points
    the AWS SDK at it."""
    try:
        import moto  # noqa: F401
    except ImportError:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(server.wait, timeout=10)
    stack.callback(server.terminate)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    return {
        "AWS_ACCESS_KEY_ID": "nerbatch-test-key",
        "AWS_SECRET_ACCESS_KEY": "nerbatch-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs. `kill_marker`: a file whose presence kills the next actor
    batch; `s3`: the environment of an S3 server (None without moto), which the workers inherit
    like credentials on a real cluster's nodes."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nerbatch[ray]')")
    marker = tmp_path_factory.mktemp("ray") / "kill-an-actor"
    with contextlib.ExitStack() as stack:
        s3 = start_s3_server(stack)
        environment = stack.enter_context(pytest.MonkeyPatch.context())
        for key, value in (s3 or {}).items():
            environment.setenv(key, value)
        environment.setenv("NERBATCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        # The workers cannot import this test module: send the hook itself.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        stack.callback(ray.cloudpickle.unregister_pickle_by_value, sys.modules[__name__])
        stack.callback(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))

        def setup_hook():
            kill_an_actor_once(str(marker))

        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={"worker_process_setup_hook": setup_hook},
        )
        stack.callback(ray.shutdown)
        yield SimpleNamespace(kill_marker=marker, s3=s3)


# Small parts and chunks: several parts, and batches for both actors, on a small corpus.
OPTIONS = {"part_docs": 7, "chunk_docs": 4, "read": ReadOptions(txt_mode="lines")}


@pytest.fixture
def run(tiny_bundle):
    def run(inputs, output, engine="local", **options) -> dict:
        options = {**OPTIONS, **options}
        options.setdefault("model", str(tiny_bundle))
        options.setdefault("variant", "fp32")
        if engine == "local":
            options.setdefault("threads", 1)
        else:
            options.setdefault("ray", RayOptions(num_workers=2))
        config = AnnotateConfig(
            inputs=[str(i) for i in inputs], output=str(output), engine=engine, **options
        )
        return annotate(config)

    return run


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """Every input format, plain and .gz, with bad documents; relative paths from tmp_path (the
    Ray workers' working directory is not the driver's)."""
    monkeypatch.chdir(tmp_path)
    build_corpus(tmp_path)
    write_bad_inputs(tmp_path / "corpus" / "bad")
    return "corpus"


def rejects_of(out) -> list[dict]:
    return pq.read_table(out / "_rejects").to_pylist()


def same_rows(out, reference) -> bool:
    """Row for row, in order, scores to the last bit: fp32 results do not depend on how the
    documents were batched. (int8 ones do, by up to ~2e-4 in either engine: dynamic quantisation
    scales activations by the range of the whole batch.)"""
    return rows_of(out) == rows_of(reference)


COUNTS = ("documents", "annotated", "rejected", "spans", "tokens")


def test_same_rows_and_rejects_as_the_local_engine(cluster, run, corpus, tmp_path):
    reference = run([corpus], tmp_path / "local.parquet")
    summary = run([corpus], tmp_path / "ray.parquet", engine="ray")
    out = tmp_path / "ray.parquet"
    manifest = assert_complete(out)
    assert {k: summary[k] for k in COUNTS} == {k: reference[k] for k in COUNTS}
    assert summary["rejected"] > 0 and summary["spans"] > 0
    assert same_rows(out, tmp_path / "local.parquet")
    assert {r["source"] for r in rows_of(out)} <= {i["path"] for i in manifest["inputs"]}
    assert all(not r["source"].startswith("/") for r in rows_of(out))  # as given: relative
    assert rejects_of(out) == rejects_of(tmp_path / "local.parquet")
    assert [p["documents"] for p in manifest["parts"]] == [
        p["documents"] for p in manifest_of(tmp_path / "local.parquet")["parts"]
    ]
    assert manifest["options"]["engine"] == "ray"
    assert manifest["position"]["documents_done"] == summary["documents"]
    # A complete output is a no-op, whichever engine is asked.
    assert run([corpus], out, engine="ray")["already_complete"] is True
    assert run([corpus], out)["already_complete"] is True


def test_cli(cluster, tiny_bundle, corpus, tmp_path):
    out = tmp_path / "out.parquet"
    result = CliRunner().invoke(
        cli,
        [
            "annotate",
            corpus,
            str(out),
            "--model",
            str(tiny_bundle),
            "--txt-mode",
            "lines",
            "--engine",
            "ray",
            "--num-workers",
            "2",
            "--fail-on-reject",
        ],
        catch_exceptions=False,
    )
    manifest = assert_complete(out)
    counts = manifest["counts"]
    assert result.exit_code == 3, result.output  # finished, with rejects
    assert result.stdout.startswith(
        f"{counts['documents']} documents ({counts['annotated']} annotated, "
        f"{counts['rejected']} rejected), {counts['tokens']} tokens, {counts['spans']} spans in "
    )
    assert result.stdout.rstrip().endswith(f"-> {out}")
    assert manifest["variant"] == "int8"  # --variant auto on CPU


def test_resume_after_a_driver_crash(cluster, run, corpus, tmp_path, monkeypatch):
    reference = tmp_path / "reference.parquet"
    complete = run([corpus], reference)
    out = tmp_path / "out.parquet"
    real_write = manifest_module.write_manifest
    commits = []

    def write_manifest(out, manifest):
        commits.append(manifest.documents_done)
        # The first write is the run's initial manifest; the fourth part is on disk, its
        # manifest never written.
        if len(commits) == 5:
            raise Crash("killed before the manifest")
        real_write(out, manifest)

    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "write_manifest", write_manifest)
        with pytest.raises(Crash):
            run([corpus], out, engine="ray")
    manifest = manifest_of(out)
    assert manifest["documents_done"] == 21 and not manifest["complete"]
    assert (out / "part-00003.parquet").exists()  # the uncommitted one: overwritten on resume
    first, skip, drop = resume_point(Manifest.from_json(manifest))
    assert drop == 0 and (first, skip) != (0, 0)  # reading starts where the commits end

    resumed = run([corpus], out, engine="ray")
    assert resumed["documents_this_run"] == complete["documents"] - 21
    assert {k: resumed[k] for k in COUNTS} == {k: complete[k] for k in COUNTS}
    assert manifest_of(out)["runs"] == 2
    assert_complete(out)
    assert same_rows(out, reference)
    assert rejects_of(out) == rejects_of(reference)


def test_one_engine_resumes_the_other(cluster, run, corpus, tmp_path, monkeypatch):
    reference = tmp_path / "reference.parquet"
    complete = run([corpus], reference)
    out = tmp_path / "out.parquet"
    # The local engine stops after 3 parts; Ray goes on from the position it recorded.
    with monkeypatch.context() as patch:
        patch.setattr(annotate_module, "documents", crashing_documents(after=23))
        with pytest.raises(Crash):
            run([corpus], out)
    position = manifest_of(out)["position"]
    assert position["documents_done"] == 21
    assert resume_point(Manifest.from_json(manifest_of(out))) == (
        position["input"],
        position["items"],
        0,
    )
    # Ray gets SIGTERM (as from cron or Airflow) once it has written 10 documents more: it
    # commits what has arrived and stops; the local engine finishes.
    write_batch = remote.write_batch
    added: list[int] = []

    def add_rows_then_sigterm(committer, batch):
        added.append(batch.num_rows)  # after the 21 done documents are dropped
        write_batch(committer, batch)
        if sum(added) >= 10:  # the run stops after this batch: no second signal
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(remote, "write_batch", add_rows_then_sigterm)
        with pytest.raises(Interrupted, match=r"stopped by SIGTERM after \d+ documents; run the"):
            run([corpus], out, engine="ray")
    done = manifest_of(out)["documents_done"]
    assert done == 21 + sum(added) and sum(added) >= 10 and not manifest_of(out)["complete"]
    assert not (out / "_lock").exists()
    summary = run([corpus], out)
    assert summary["documents_this_run"] == complete["documents"] - done
    assert {k: summary[k] for k in COUNTS} == {k: complete[k] for k in COUNTS}
    assert_complete(out)
    assert same_rows(out, reference)
    assert rejects_of(out) == rejects_of(reference)


def test_a_dead_actor_is_restarted_and_its_batch_retried(cluster, run, corpus, tmp_path):
    reference = run([corpus], tmp_path / "reference.parquet")
    cluster.kill_marker.touch()
    summary = run([corpus], tmp_path / "out.parquet", engine="ray")
    assert not cluster.kill_marker.exists()  # an actor died on it
    assert {k: summary[k] for k in COUNTS} == {k: reference[k] for k in COUNTS}
    assert_complete(tmp_path / "out.parquet")
    assert same_rows(tmp_path / "out.parquet", tmp_path / "reference.parquet")


def test_empty_input_still_completes(cluster, run, tmp_path):
    empty = tmp_path / "in" / "empty.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    summary = run([empty], tmp_path / "out.parquet", engine="ray")
    assert summary["documents"] == 0
    assert_complete(tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0


def upload(fs, local: Path, key: str) -> str:
    """Copy a local directory tree to s3://KEY; returns the URI."""
    import pyarrow.fs as pafs

    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        target = f"{key}/{path.relative_to(local).as_posix()}"
        pafs.copy_files(str(path), target, destination_filesystem=fs)
    return f"s3://{key}"


def test_inputs_bundle_and_output_on_s3(cluster, run, tiny_bundle, tmp_path):
    if cluster.s3 is None:
        pytest.skip("moto[server] is needed for the S3 test (the [dev] extra)")
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=cluster.s3["AWS_ENDPOINT_URL"], scheme="http", allow_bucket_creation=True
    )
    fs.create_dir("ray-test")
    corpus = build_corpus(tmp_path)
    write_bad_inputs(corpus / "bad")
    reference = tmp_path / "reference.parquet"
    local = run([corpus], reference)
    corpus_uri = upload(fs, corpus, "ray-test/in")
    bundle_uri = upload(fs, tiny_bundle, "ray-test/bundle")

    summary = run([corpus_uri], "s3://ray-test/out", engine="ray", model=bundle_uri)
    assert {k: summary[k] for k in COUNTS} == {k: local[k] for k in COUNTS}

    def rows(table, replace=("", "")):
        return [
            {k: v.replace(*replace) if isinstance(v, str) else v for k, v in r.items()}
            for r in table.to_pylist()
        ]

    uri = (str(corpus), corpus_uri)
    assert rows(pq.read_table("ray-test/out", filesystem=fs)) == rows(pq.read_table(reference), uri)
    assert rows(pq.read_table("ray-test/out/_rejects", filesystem=fs)) == rows(
        pq.read_table(reference / "_rejects"), uri
    )
    assert fs.get_file_info("ray-test/out/_SUCCESS").type == pafs.FileType.File


def test_unusable_input_stops_the_run_as_locally(cluster, run, tmp_path):
    good = tmp_path / "in" / "a.jsonl"
    good.parent.mkdir()
    good.write_text('{"text": "John Smith"}\n')
    table = write_parquet(tmp_path / "in" / "b.parquet", {"id": ["a"], "body": ["Mary"]})
    for engine in ("local", "ray"):
        with pytest.raises(InputError) as error:
            run([tmp_path / "in"], tmp_path / f"{engine}.parquet", engine=engine)
        assert str(error.value) == (
            f"{table}: no column 'text' (columns: ['id', 'body']); choose one with --text-column"
        )
        assert not (tmp_path / f"{engine}.parquet" / "_lock").exists()


# --- without a cluster: errors found before one starts -------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ray": RayOptions(num_workers=0)}, "--num-workers must be at least 1, not 0"),
        ({"ray": RayOptions(cpus_per_worker=0)}, "--cpus-per-worker must be at least 1, not 0"),
        ({"ray": RayOptions(gpus_per_worker=1)}, "--gpus-per-worker 1 needs --device cuda"),
        ({"device": "cuda", "ray": RayOptions(gpus_per_worker=0)}, "--gpus-per-worker above 0"),
        ({"threads": 2}, "--threads sets the local engine's ONNX Runtime threads"),
        ({"streams": 2}, "--streams is the local engine's; on Ray, run more workers"),
        ({"engine": "dask"}, "unknown engine 'dask'; expected one of ['local', 'ray', 'spark']"),
    ],
)
def test_bad_options(run, tmp_path, options, message):
    options.setdefault("engine", "ray")
    with pytest.raises(NerbatchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run([tmp_path / "missing"], tmp_path / "out.parquet", **options)
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--engine", "ray", "--num-workers", "0"], "Invalid value for '--num-workers': 0 is not"),
        (["--num-workers", "2"], "--gpus-per-worker need --engine ray"),
        (["--engine", "dask"], "Invalid value for '--engine': 'dask' is not one of"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, arguments, message):
    (tmp_path / "a.txt").write_text("John Smith")
    result = CliRunner().invoke(
        cli, ["annotate", str(tmp_path / "a.txt"), str(tmp_path / "out"), *arguments]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_ray_missing_is_one_clear_error(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as if not installed
    (tmp_path / "a.txt").write_text("John Smith")
    result = CliRunner().invoke(
        cli,
        ["annotate", str(tmp_path / "a.txt"), str(tmp_path / "out"), "--engine", "ray"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert result.output == (
        "Error: this command needs the 'ray' package, which is not installed; install it with: "
        "pip install 'nerbatch[ray]'\n"
    )
    with pytest.raises(MissingExtraError):
        annotate(AnnotateConfig([str(tmp_path / "a.txt")], str(tmp_path / "o"), engine="ray"))


def test_a_second_signal_stops_at_once():
    stop = RayStopFlag()
    stop._handle(signal.SIGTERM, None)
    assert stop.signal == signal.SIGTERM  # the first: stop after the batch on its way
    with pytest.raises(Interrupted, match="stopped by a second SIGINT; run the same command"):
        stop._handle(signal.SIGINT, None)


def test_errors_from_workers_come_out_as_ours():
    def raised(error, wrap):
        try:
            try:
                raise error
            except Exception as e:
                raise wrap from e
        except Exception as e:
            return e

    bundle_error = BundleError("on Ray node n1: model bundle /b does not exist")
    assert _ray_error(raised(bundle_error, RuntimeError("task failed"))) is bundle_error

    class RayTaskError(RuntimeError):  # how Ray carries a worker's exception
        def __init__(self, cause):
            super().__init__("traceback text")
            self.cause = cause

    assert _ray_error(RayTaskError(bundle_error)) is bundle_error
    other = _ray_error(raised(MemoryError("worker ran out"), RayTaskError(MemoryError("x"))))
    assert str(other).startswith("the Ray job failed: MemoryError: x; the output stays resumable")


@pytest.mark.parametrize("runtime", ["openvino", "auto"])
def test_the_openvino_runtime_on_ray(cluster, run, ov_bundle, corpus, tmp_path, runtime):
    """int8 on Ray with the openvino variant: `openvino` on every actor, or `auto`, which each
    actor resolves on its node (and logs); the output is complete and has the local run's
    documents and spans (static int8: batch composition changes scores by rounding only)."""
    options = {"model": str(ov_bundle), "variant": "int8", "runtime": runtime}
    local = {**options, "runtime": "openvino"}
    reference = run([corpus], tmp_path / "local.parquet", **local)
    summary = run([corpus], tmp_path / "ray.parquet", engine="ray", **options)
    manifest = assert_complete(tmp_path / "ray.parquet")
    assert manifest["settings"]["runtime"] == runtime
    assert {k: summary[k] for k in COUNTS} == {k: reference[k] for k in COUNTS}
    if runtime == "openvino":
        keys = ("doc_id", "source", "start", "end", "label")
        spans = [tuple(r[k] for k in keys) for r in rows_of(tmp_path / "ray.parquet")]
        assert spans == [tuple(r[k] for k in keys) for r in rows_of(tmp_path / "local.parquet")]


def test_progress_events_come_as_the_actors_results_do(cluster, tiny_bundle, tmp_path):
    """The driver knows documents and input bytes as batches come back: `progress` events with
    rising percentages to 100 (issue 25's point 4 on Ray)."""
    corpus = write_shards(tmp_path / "corpus", ["John Smith in Paris"] * 60)
    with progress_events() as events:
        config = AnnotateConfig(
            [str(corpus)],
            str(tmp_path / "out.parquet"),
            model=str(tiny_bundle),
            variant="fp32",
            engine="ray",
            chunk_docs=50,
        )
        summary = annotate(config, progress_every=0.000001)
    percents = [e["percent"] for e in events]
    assert len(percents) >= 4 and percents == sorted(percents) and percents[-1] == 100.0
    assert events[-1]["documents"] == summary["documents"] == 244
    assert events[-1]["rejected"] == summary["rejected"] == 4
