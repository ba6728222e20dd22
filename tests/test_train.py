"""`nerbatch train` on a tiny random BERT: what the checkpoint holds, repeatability, any tag set,
the `datasets` path, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ner_batch.cli import cli
from ner_batch.train import TrainConfig, train

GMB = """Thousands NNS O
of IN O
demonstrators NNS O
marched VBN O
through IN O
London NNP B-geo
to TO O
protest VB O
the DT O
war NN O
in IN O
Iraq NNP B-geo
on IN O
Monday NNP B-tim
. . O

Iranian JJ B-gpe
officials NNS O
of IN O
the DT O
United NNP B-org
Nations NNP I-org
met VBD O
President NNP B-per
Ahmadinejad NNP I-per
during IN O
the DT O
Olympic NNP B-eve
Games NNP I-eve
with IN O
Mona NNP B-art
Lisa NNP I-art
and CC O
El NNP B-nat
Nino NNP I-nat
. . O
"""


def tiny_train(tiny_base: Path, out: Path, **options) -> dict:
    config = {
        "base_model": str(tiny_base),
        "out": str(out),
        "epochs": 2,
        "batch_size": 2,
        "lr": 5e-3,
        "max_length": 32,
        **options,
    }
    return train(TrainConfig(**config))


def test_checkpoint_holds_model_tokenizer_labels_metrics_and_curves(tiny_checkpoint):
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "labels.json",
        "nerbatch.json",
        "metrics.json",
        "curves.png",
    ):
        assert (tiny_checkpoint / name).stat().st_size > 0, name
    labels = json.loads((tiny_checkpoint / "labels.json").read_text())
    assert labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    metrics = json.loads((tiny_checkpoint / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1.0, 2.0]
    for epoch in metrics["epochs"]:
        assert epoch["train_loss"] > 0 and epoch["train_seconds"] >= 0
        assert 0 <= epoch["dev_f1"] <= 1
        assert set(epoch["dev_per_type"]) == {"LOC", "ORG", "PER"}
    assert metrics["best_dev_f1"] == max(e["dev_f1"] for e in metrics["epochs"])
    meta = json.loads((tiny_checkpoint / "nerbatch.json").read_text())
    assert meta["word_shapes"] is True and meta["labels"] == labels
    assert len(meta["train_data"]["sha256"]) == 64


def test_the_seed_makes_runs_repeatable(tiny_base, tiny_conll, tmp_path):
    runs = [
        tiny_train(
            tiny_base, tmp_path / name, train=str(tiny_conll), dev=str(tiny_conll), seed=seed
        )
        for name, seed in (("a", 7), ("b", 7), ("c", 8))
    ]
    losses = [[e["train_loss"] for e in r["epochs"]] for r in runs]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_any_tag_set_trains(tiny_base, tmp_path):
    data = tmp_path / "gmb.txt"
    data.write_text(GMB)
    tiny_train(
        tiny_base,
        tmp_path / "gmb",
        train=str(data),
        dev=str(data),
        word_shapes=False,
        label_all_subtokens=True,
    )
    labels = json.loads((tmp_path / "gmb" / "labels.json").read_text())
    assert {label[2:] for label in labels if label != "O"} == {
        "art",
        "eve",
        "geo",
        "gpe",
        "nat",
        "org",
        "per",
        "tim",
    }


def test_a_datasets_dataset_on_disk(tiny_base, tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {
        "tokens": [["John", "Smith", "visited", "Paris"], ["Mary", "is", "in", "London"]],
        "ner_tags": [[1, 2, 0, 3], [1, 0, 0, 3]],
    }
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(tmp_path / "ds")
    metrics = tiny_train(tiny_base, tmp_path / "out", dataset=str(tmp_path / "ds"))
    assert len(metrics["epochs"]) == 2
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == [
        "O",
        "B-LOC",
        "I-LOC",
        "B-PER",
        "I-PER",
    ]


def test_cli_train_then_score_the_checkpoint(tiny_base, tiny_conll, tmp_path):
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train",
            str(tiny_conll),
            "--dev",
            str(tiny_conll),
            "--out",
            str(out),
            "--base-model",
            str(tiny_base),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--max-length",
            "32",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    # the default recipe trains on dev too, keeps the last epoch and says its dev F1 is not held out
    assert "last epoch, dev F1" in result.output and "dev was trained on" in result.output
    report = tmp_path / "score.json"
    result = CliRunner().invoke(
        cli,
        ["score", "--model", str(out), str(tiny_conll), "--json", str(report)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "micro avg" in result.output and "checkpoint" in result.output
    assert set(json.loads(report.read_text())["default"]["per_type"]) == {"LOC", "ORG", "PER"}


def test_cli_train_errors_name_the_file_and_line(tiny_base, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("John B-PER\nSmith X-PER\n")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train",
            str(bad),
            "--dev",
            str(bad),
            "--out",
            str(tmp_path / "o"),
            "--base-model",
            str(tiny_base),
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}:2: tag 'X-PER' has unknown prefix 'X'")


def test_train_without_data_is_an_error(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Error: no train data: give --train PATH or --dataset NAME" in result.output


def _weights(directory: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


def test_average_last_keeps_the_mean_of_the_last_epochs(tmp_path, tiny_base, tiny_conll):
    """Three epochs, the last two averaged: the checkpoint is neither epoch's weights, its dev
    F1 is recorded, and averaging one epoch is that epoch."""
    import numpy as np

    out = tmp_path / "avg"
    metrics = tiny_train(
        tiny_base,
        out,
        train=str(tiny_conll),
        dev=str(tiny_conll),
        epochs=3,
        average_last=2,
        save_last_epoch=True,
    )
    assert metrics["kept"] == "averaged"
    assert metrics["averaged"]["epochs"] == [2.0, 3.0]
    assert 0 <= metrics["averaged"]["dev_f1"] <= 1
    averaged, last = _weights(out), _weights(out / "last-epoch")
    name = "classifier.weight"
    assert not np.allclose(averaged[name], last[name])
    one = tmp_path / "one"
    tiny_train(
        tiny_base,
        one,
        train=str(tiny_conll),
        dev=str(tiny_conll),
        epochs=3,
        average_last=1,
        save_last_epoch=True,
    )
    for key, value in _weights(one / "last-epoch").items():
        np.testing.assert_allclose(_weights(one)[key], value, rtol=0, atol=1e-7, err_msg=key)


def test_train_on_dev_cli_adds_dev_and_keeps_the_last_epoch(tmp_path, tiny_base, tiny_conll):
    """Through the CLI: dev's tags join the label set (here a dev-only type), and metrics.json
    says dev was trained on and the last epoch kept."""
    dev = tmp_path / "dev.txt"
    dev.write_text("Mona NNP B-NEW\nsmiles VBZ O\n\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--train",
            str(tiny_conll),
            "--dev",
            str(dev),
            "--out",
            str(out),
            "--base-model",
            str(tiny_base),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--max-length",
            "32",
            "--train-on-dev",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev_in_training"] is True and metrics["kept"] == "last"
    assert "B-NEW" in json.loads((out / "labels.json").read_text())
    bad = CliRunner().invoke(
        cli, ["train", "--train", str(tiny_conll), "--out", str(out), "--average-last", "-1"]
    )
    assert bad.exit_code == 2
