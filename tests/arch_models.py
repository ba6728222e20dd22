"""Tiny random token classifiers of several architectures, built and saved locally (no Hub).

Each family of FAMILIES builds, into a directory, a randomly initialised
`AutoModelForTokenClassification` and its fast tokenizer, saved with `save_pretrained` so the
directory looks like a Hub checkpoint or a `Trainer` output (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, ...). The tokenizer is trained with `tokenizers` on a small
built-in English corpus (CORPUS) and assembled the way the transformers class of that family
assembles it, because on reload (transformers 5) a model-specific tokenizer class takes only the
vocabulary, merges and post-processor from tokenizer.json and rebuilds its normalizer,
pre-tokenizer and decoder from tokenizer_config.json: a tokenizer.json that disagrees with its
class would reload as a different tokenizer (`reload_mismatches` checks this).

`build(family, directory, scheme, seed)` builds one model with the labels of SCHEMES[scheme].
The classifier head is scaled up and given a random bias so the random model predicts several
entities of several types per sentence, with argmax margins far above fp32 noise.

`pipeline_spans` runs the transformers token-classification pipeline; `scheme_oracle_spans` is a
scheme-aware reference computed from the same PyTorch logits, with the pipeline's own word
grouping (`TokenClassificationPipeline.gather_pre_entities`) but decoding spans by the scheme.

Where the pipeline mis-decodes (transformers 5.x, `group_entities` / `get_tag` /
`group_sub_entities`): `get_tag` only knows the `B-` and `I-` prefixes; any other label (`E-PER`,
`S-PER`, `L-PER`, `U-PER`, `PER`, `LABEL_3`) is taken as an "I-" continuation of a type spelled
like the whole label. The group's type is then printed by `label.split("-", 1)[-1]`, so labels
still come out as `PER`, but the boundaries are wrong for BIOES/BILOU:

- `B-PER E-PER` ("John Smith") gives two PER entities, John and Smith (type `PER` != `E-PER`);
  likewise `B-PER I-PER E-PER` gives [B I] and [E];
- `S-PER S-PER` (two one-word entities) gives one PER entity over both words, as do
  `E-PER E-PER` and `U-PER U-PER`: E-/S- never close an entity;
- `I-PER` right after `S-PER` or `E-PER` opens a new entity (right, by accident of the type
  mismatch), but `E-PER` after `I-PER` or `B-PER` never joins it.

IOB1, IOB2 and IO decode the same in the pipeline and in the oracle. The `label_n` scheme has no
"O" label (the pipeline ignores only the label "O"), so every word is in some LABEL_k entity.

The pipeline's words (`word_spans`; the oracle groups the same way, so these show in both):
WordPiece models have `continuing_subword_prefix` "##" and group right (a sub-token is a
subword when its length differs from its text's). BPE (RoBERTa's prefix is "", falsy) and
Unigram models fall back to "a sub-token is a subword unless a space is just before or at its
start", so with them:

- punctuation attached in raw text joins the word, and the entity: "Paris, France." gives the
  words "Paris," and "France."; "U.S.-based" and "O'Neil's" are one word each;
- only " " counts: "Tokyo\tBerlin\tCairo" (or words after a newline) is one word;
- RoBERTa (trim_offsets=True): a lone "Ġ" sub-token (a space before a piece it does not merge
  with, as " ." in CoNLL text or a double space) gets the empty offsets (k, k): an empty word,
  so entities with start == end ("lamb ." gives ..., (47, 47), (47, 48)), or a span ending in a
  space ("Bank " when the "Ġ" word continues the entity); the byte pieces of one multi-byte
  character ("🙂") all carry that character's offsets after a space, so each is a word of its
  own: two entities over the same character, possibly of different types;
- XLM-R (WhitespaceSplit then Metaspace): a lone "▁" gets the offsets of the word's first
  character, and so does the piece after it: " ." gives two words (47, 48), and two entities
  over the same ".";
- DeBERTa-v2 (Metaspace alone, no whitespace split): every "▁piece" includes the space before
  it in its offsets ("▁France" is (6, 13) in "Paris, France."), so every entity but one at the
  start of the text begins with a space (transformers issue #18111), and a lone "▁" is a word
  made of just a space.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

TYPES = ("PER", "LOC", "ORG", "MISC")
MAX_LEN = 128  # tokenizer model_max_length; position embeddings cover it (+2 for RoBERTa kinds)

SCHEMES: dict[str, list[str]] = {
    "iob2": ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"],
    # IOB1 has the same label set as IOB2 (B- only between two same-type entities)
    "iob1": ["O"] + [f"{p}-{t}" for t in TYPES for p in "IB"],
    "bioes": ["O"] + [f"{p}-{t}" for t in TYPES for p in "BIES"],
    "bilou": ["O"] + [f"{p}-{t}" for t in TYPES for p in "BILU"],
    "io": ["O", *TYPES],
    # what a config without id2label gets: nothing is "outside"
    "label_n": [f"LABEL_{i}" for i in range(9)],
}

# ---------------------------------------------------------------------------------------------
# Corpus: a few hundred sentences from word lists, for training the tokenizers.

FIRST_NAMES = [
    "John", "Mary", "Peter", "Anna", "José", "François", "Zoë", "Jean-Luc", "Björn", "Søren",
    "Ana", "Luis", "Chloé", "Renée", "Mohammed", "Wei", "Hiroshi", "Olga", "Siobhan", "Dmitri",
]  # fmt: skip
LAST_NAMES = [
    "Smith", "Müller", "O'Neil", "García", "Blackburn", "Dupont", "Nguyen", "Schröder",
    "Kowalski", "Ibáñez", "McDonald", "Yamamoto", "Rossi", "Jensen", "Brontë", "D'Angelo",
]  # fmt: skip
PLACES = [
    "Paris", "London", "Berlin", "New York", "São Paulo", "Zürich", "Köln", "Montréal",
    "Reykjavík", "Kraków", "Málaga", "Tokyo", "Beijing", "Cairo", "Lagos", "Sydney", "Texas",
    "France", "Germany", "Brazil", "Switzerland", "the U.S.", "the U.K.", "Los Angeles",
]  # fmt: skip
ORGS = [
    "Acme Corp.", "Reuters", "the United Nations", "the European Commission", "Deutsche Bank",
    "Google", "Apple Inc.", "Nestlé", "Société Générale", "U.S. Steel", "the EU", "NATO",
    "Siemens AG", "Toyota", "the World Bank", "FC Barcelona", "Bayern München", "IBM",
]  # fmt: skip
MISC = [
    "German", "French", "British", "Brazilian", "Swiss", "European", "Olympics", "World Cup",
    "Christmas", "Euro", "Nobel Prize", "Japanese", "English", "Catholic", "Internet",
]  # fmt: skip
VERBS = [
    "visited", "met", "said", "called", "joined", "left", "praised", "criticised", "sued",
    "thanked", "signed with", "spoke to", "moved to", "flew to", "wrote to", "returned from",
]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FILLERS = [
    "on Thursday", "last year", "in 1996", "at 10:30", "for $5.2 million", "by 3-1",
    "with 45 % of the vote", "after a two-hour meeting", "on 12 March", "early today",
]  # fmt: skip
_COMMON_TEXT = """
about above across after again against almost along already also although always among amount
analysis announced another answer anyone anything appear approach area army around arrived
article asked attack attention average away back bad ball bank based beautiful became because
become been before began behind being believe best better between beyond big bill black blood
board body book born both boy break bring brother budget build building business buy called
came campaign capital car care career case cause central century certain chairman chance change
charge chief child children church city claim class clear close club coach coast cold college
come committee common community company competition conference congress control cost council
country county court crisis cup current customer data daughter deal death debate decade decided
defence demand department described despite development died difference director discussed
district doctor dollar draw during early east economic economy education effort election
employees energy enough entire environment especially evening event every evidence exchange
expected experience face fact family famous father federal field fight figure film final finance
financial fire first floor following force foreign forward found free friend front full future
game general girl global goal government great green ground group growth half hand happened
head health hear heart heavy held help high history hold home hospital hotel house however huge
human idea important including increase industry information inside interest international
investment island issue itself job join journalist judge justice keep kind king known labour
land language large later law leader league least leave legal less letter level life light
likely line list little local long look lost market match media meeting member military million
minister minute model money month morning mother movement music national natural nearly network
never news newspaper night north nothing number office officials often oil open opposition order
others outside owner painting parliament party passed past patient peace people percent period
person plan player point police policy political popular population position power president
press price prison private problem production programme project public quarter question quickly
race radio rate reached real reason record region remain report research result return right
river road role round rule safety school science season second security senior series service
several share short show side since single sister small social society soldier something soon
south special spokesman sport spring staff stage start state station still stock story street
strong student study success summer support system table talks team television term test
thousand through today together tonight total tournament town trade training travel trial
union university until value victory village violence voters war water week welcome west whole
wife window winter within without woman women worker world writer yesterday young
"""
COMMON = _COMMON_TEXT.split()

DIGITS = list(range(10)) * 4
NUMBER_FORMATS = ["{0}{1}", "{0}.{1}{2}", "{0}{1}-{2}{3}", "19{0}{1}", "{0},{1}{2}{3}", "#{0}"]
# Characters the tokenizers know even when the corpus lacks them (no [UNK] for a rare letter).
ALPHABET = sorted(
    set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        ".,;:!?'\"()[]{}-_/\\&@#$%*+=<>|~^`«»…—–€£"
        "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝŁłŚśŻżČčŠšŽž"
    )
)

TEMPLATES = [
    "{per} {verb} {loc} {fill}.",
    "{org} {verb} {per} in {loc}.",
    "{per}, a {misc} citizen, {verb} {org} {fill}.",
    '"We will win," said {per} of {org}.',
    "The {misc} team beat {org} {fill} in {loc}.",
    "{per}'s company is based in {loc}, {loc2}.",
    "A {org} spokesman told {per} on {day} that {loc} was ready.",
    "{per} ({org}) {verb} {per2} {fill}!",
    "Is {per} really moving to {loc}?",
    "{org}'s shares rose 3.5 % to 102.40 euros on {day}; {per} was pleased.",
    "In {loc}, {per} and {per2} {verb} the {misc} minister.",
    "{loc}-based {org} hired {per} - the {misc} champion - {fill}.",
]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def make_corpus(n: int = 400, seed: int = 1234) -> list[str]:
    """`n` sentences with names, places, organisations, digits, punctuation, accents."""
    rng = random.Random(seed)
    sentences = []
    for i in range(n):
        sentence = TEMPLATES[i % len(TEMPLATES)].format(
            per=_person(rng),
            per2=rng.choice(FIRST_NAMES),
            org=rng.choice(ORGS),
            loc=rng.choice(PLACES),
            loc2=rng.choice(PLACES),
            misc=rng.choice(MISC),
            verb=rng.choice(VERBS),
            day=rng.choice(DAYS),
            fill=rng.choice(FILLERS),
        )
        sentences.append(sentence[0].upper() + sentence[1:])
        # and a sentence of common words around a name, for a broader vocabulary
        words = rng.sample(COMMON, 8)
        words.insert(rng.randrange(9), rng.choice(PLACES + ORGS + LAST_NAMES))
        words.insert(rng.randrange(10), rng.choice(NUMBER_FORMATS).format(*rng.sample(DIGITS, 4)))
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ";", ","]))
    return sentences


CORPUS = make_corpus()
VOCAB_SIZE = 1000
O_FRACTION = 0.5  # of sub-tokens a built model labels O (schemes with an O)
HEAD_SCALE = 20.0  # classifier weights x this after random init
MIN_MARGIN = 1e-3  # smallest top-2 logit gap on ALL_SENTENCES (fp32 noise is ~1e-6)
MAX_BIAS_DRAWS = 1000

# ---------------------------------------------------------------------------------------------
# Test sentences.

_HANDWRITTEN_CONLL = [
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn",
    "BRUSSELS 1996-08-22",
    "The European Commission said on Thursday it disagreed with German advice to consumers .",
    "Germany 's representative to the European Union 's veterinary committee Werner Zwingmann "
    "said on Wednesday consumers should buy sheepmeat from countries other than Britain .",
    "Jean-Luc Picard visited São Paulo and Zürich last year .",
    "Thomas Müller scored twice for Bayern München on Saturday .",
    "Shaun O'Neil joined the U.S. team in Los Angeles .",
    "José Ibáñez of Société Générale met François Dupont in Montréal .",
    "SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .",
    "Nadim Ladki",
    "AL-AIN , United Arab Emirates 1996-12-06",
    "Japan began the defence of their Asian Cup title with a lucky 2-1 win against Syria .",
    "But China saw their luck desert them in the second match of the group .",
    "Reuters reported that Nestlé shares fell 2.5 % in Zürich .",
    "Zoë Brontë and Søren Jensen flew to Reykjavík on Monday .",
    "Apple Inc. and IBM signed a deal worth $ 5.2 million .",
    "The Nobel Prize went to a Brazilian scientist from Málaga .",
    "Mohammed D'Angelo ( NATO ) spoke to Hiroshi Yamamoto in Tokyo .",
    "Kraków , Köln and Cairo are cities ; Lagos is one too .",
]

_CONLL_TEMPLATES = [
    "{per} {verb} {loc} {fill} .",
    "{org} {verb} {per} in {loc} .",
    "{per} , a {misc} citizen , {verb} {org} {fill} .",
    '" We will win , " said {per} of {org} .',
    "{per} ( {org} ) {verb} {per2} {fill} !",
    "In {loc} , {per} and {per2} {verb} the {misc} minister .",
    "{org} 's shares rose 3.5 % on {day} ; {per} was pleased .",
    "Is {per} really moving to {loc} ?",
]


def _conll_sentences(n: int, seed: int = 99) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = _CONLL_TEMPLATES[i % len(_CONLL_TEMPLATES)].format(
            per=_person(rng),
            per2=rng.choice(FIRST_NAMES),
            org=rng.choice(ORGS),
            loc=rng.choice(PLACES),
            misc=rng.choice(MISC),
            verb=rng.choice(VERBS),
            day=rng.choice(DAYS),
            fill=rng.choice(FILLERS).replace("$", "$ "),
        )
        out.append(" ".join(text.split()))  # CoNLL style: tokens joined by single spaces
    return out


# Tokens joined by single spaces, as the CoNLL reader builds text from gold tokens.
CONLL_LIKE_SENTENCES: list[str] = _HANDWRITTEN_CONLL + _conll_sentences(80)

# Raw text: punctuation attached, emoji, accents, double spaces, a tab, a newline.
RAW_SENTENCES: list[str] = [
    "Paris, France.",
    "The U.S.-based firm hired O'Neil's lawyer.",
    "Jean-Luc met Anna in São Paulo 🙂 yesterday!",
    "Müller (Bayern München) scored; Zürich celebrated.",
    "Acme Corp.'s CEO, John Smith, resigned.",
    'She said:  "London  is  great"  twice.',
    "Tokyo\tBerlin\tCairo",
    "Dr. García-Márquez flew to Montréal on 12/03/2021 at 10:30.",
    "IBM, Google & Apple Inc. — rivals?",
    "«Société Générale» is French… really.",
    "Zoë's café in Köln sells crème brûlée for €4.50.",
    "Call +1-800-555-0199 or mail info@acme.com now.",
    "  Leading spaces and trailing spaces  ",
    "北京 and 東京 are capitals.",
    "The World Cup 2014 was held in Brazil 🇧🇷.",
    "Siobhan O'Neil-McDonald (née Brontë) lives in Reykjavík.",
    "Line one about Berlin.\nLine two about Lagos.",
    "NATO/EU talks in Brussels ended 3-1.",
    "U.K. and U.S. officials met at the U.N. yesterday.",
    "Ibáñez's #1 hit: 'Málaga'.",
]

ALL_SENTENCES = CONLL_LIKE_SENTENCES + RAW_SENTENCES

# ---------------------------------------------------------------------------------------------
# Tokenizers, each assembled as its transformers class assembles it (see the module docstring).

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # <pad> = 1 as in RoBERTa/XLM-R


@functools.cache
def _wordpiece(lowercase: bool):
    """A WordPiece tokenizer in BertTokenizer's layout. Its vocabulary is learnt with BpeTrainer
    and converted: tokenizers' WordPieceTrainer is not reproducible across processes (it numbers
    the ##-pieces in a Rust HashMap's order, which changes merge tie-breaks: ~3 % of the
    vocabulary differs from run to run), BpeTrainer without a subword prefix is. Each BPE piece
    becomes `piece` where it starts a word in the corpus and `##piece` where it continues one,
    kept by corpus frequency."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    def normalizer():
        return normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=None if lowercase else False,  # None: strip when lowercasing, as BERT
            lowercase=lowercase,
        )

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.normalizer = normalizer()
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + VOCAB_SIZE // 2,
        special_tokens=BERT_SPECIALS,
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    counts: Counter[str] = Counter()
    for enc in bpe.encode_batch(CORPUS):
        previous = None
        for token, word in zip(enc.tokens, enc.word_ids, strict=True):
            counts[token if word != previous else "##" + token] += 1
            previous = word
    chars = sorted({c for piece in bpe.get_vocab() if len(piece) == 1 for c in piece})
    base = list(dict.fromkeys(BERT_SPECIALS + chars + ["##" + c for c in chars]))
    ranked = sorted((p for p in counts if p not in base), key=lambda p: (-counts[p], p))
    pieces = base + ranked[: VOCAB_SIZE - len(base)]
    tokenizer = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(BERT_SPECIALS)
    _bert_template(tokenizer)
    return tokenizer


def _bert_template(tokenizer) -> None:
    from tokenizers import processors

    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


@functools.cache
def _byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    # RobertaTokenizer's backend: BPE without subword prefix/suffix, ByteLevel without a prefix
    # space (roberta-base's add_prefix_space=False), RobertaProcessing with trim_offsets=True.
    tokenizer = Tokenizer(
        models.BPE(continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")),
        ("<s>", tokenizer.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return tokenizer


def _unigram(specials: list[str], unk: str, normalizer, pre_tokenizer, bos: str, eos: str):
    from tokenizers import Tokenizer, decoders, models, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        unk_token=unk,
        initial_alphabet=ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    # UnigramTrainer is not reproducible across processes either: the same pieces come out, but
    # the required characters it adds back at the end get their scores (min - k * 1e-4) in a Rust
    # HashMap's order, and scores carry ~1e-14 of summation noise, so ids and ties move. Give
    # those characters fixed scores, round the others, and number pieces by (-score, piece).
    trained = json.loads(tokenizer.to_str())["model"]["vocab"]
    normal = [(piece, score) for piece, score in trained[len(specials) :]]
    floor = min(score for piece, score in normal if len(piece) > 1) + 1e-9
    missing = sorted(piece for piece, score in normal if len(piece) == 1 and score < floor)
    kept = {piece: round(score, 6) for piece, score in normal if piece not in set(missing)}
    lowest = min(kept.values()) - 1.0
    kept.update({piece: round(lowest - 1e-4 * i, 6) for i, piece in enumerate(missing)})
    vocab = [(piece, 0.0) for piece in specials]
    vocab += sorted(kept.items(), key=lambda item: (-item[1], item[0]))
    tokenizer.model = models.Unigram(vocab, unk_id=specials.index(unk), byte_fallback=False)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 $B:1 {eos}:1",
        special_tokens=[(bos, tokenizer.token_to_id(bos)), (eos, tokenizer.token_to_id(eos))],
    )
    return tokenizer


@functools.cache
def _xlmr_unigram():
    from tokenizers import pre_tokenizers

    # XLMRobertaTokenizer: WhitespaceSplit + Metaspace("always"), Unigram with <unk> = id 3. Its
    # Precompiled (nmt_nfkc) normalizer is only rebuilt from a charsmap: we have none, so none.
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        ]
    )
    return _unigram(ROBERTA_SPECIALS, "<unk>", None, pre, "<s>", "</s>")


@functools.cache
def _deberta_unigram():
    from tokenizers import Regex, normalizers, pre_tokenizers

    # DebertaV2Tokenizer (deberta-v3: do_lower_case=False, split_by_punct=False): whitespace runs,
    # tabs and newlines -> one space, NFC, strip on the right; Metaspace("always"); [UNK] = id 1.
    normalizer = normalizers.Sequence(
        [
            normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "),
            normalizers.NFC(),
            normalizers.Strip(left=False, right=True),
        ]
    )
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    return _unigram(BERT_SPECIALS, "[UNK]", normalizer, pre, "[CLS]", "[SEP]")


# ---------------------------------------------------------------------------------------------
# Families.


def _labels(scheme: str) -> dict:
    labels = SCHEMES[scheme]
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def _bert(lowercase: bool):
    def make(scheme: str):
        from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

        backend = _wordpiece(lowercase)
        tokenizer = BertTokenizerFast(
            tokenizer_object=backend,
            do_lower_case=lowercase,
            strip_accents=None if lowercase else False,
            model_max_length=MAX_LEN,
        )
        config = BertConfig(
            vocab_size=backend.get_vocab_size(),
            intermediate_size=64,
            max_position_embeddings=MAX_LEN,
            pad_token_id=tokenizer.pad_token_id,
            **TINY,
            **_labels(scheme),
        )
        return BertForTokenClassification(config), tokenizer

    return make


def _distilbert(scheme: str):
    from transformers import (
        DistilBertConfig,
        DistilBertForTokenClassification,
        DistilBertTokenizerFast,
    )

    backend = _wordpiece(lowercase=True)
    tokenizer = DistilBertTokenizerFast(
        tokenizer_object=backend, do_lower_case=True, model_max_length=MAX_LEN
    )
    config = DistilBertConfig(
        vocab_size=backend.get_vocab_size(),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=MAX_LEN,
        pad_token_id=tokenizer.pad_token_id,
        **_labels(scheme),
    )
    return DistilBertForTokenClassification(config), tokenizer


def _electra(scheme: str):
    from transformers import ElectraConfig, ElectraForTokenClassification, ElectraTokenizerFast

    backend = _wordpiece(lowercase=True)
    tokenizer = ElectraTokenizerFast(
        tokenizer_object=backend, do_lower_case=True, model_max_length=MAX_LEN
    )
    config = ElectraConfig(
        vocab_size=backend.get_vocab_size(),
        embedding_size=32,
        intermediate_size=64,
        max_position_embeddings=MAX_LEN,
        pad_token_id=tokenizer.pad_token_id,
        **TINY,
        **_labels(scheme),
    )
    return ElectraForTokenClassification(config), tokenizer


def _roberta(scheme: str):
    from transformers import RobertaConfig, RobertaForTokenClassification, RobertaTokenizerFast

    backend = _byte_level_bpe()
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=backend,
        add_prefix_space=False,
        trim_offsets=True,
        model_max_length=MAX_LEN,
    )
    config = RobertaConfig(
        vocab_size=backend.get_vocab_size(),
        intermediate_size=64,
        max_position_embeddings=MAX_LEN + 2,  # positions start after padding_idx = 1
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **TINY,
        **_labels(scheme),
    )
    return RobertaForTokenClassification(config), tokenizer


def _xlm_roberta(scheme: str):
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForTokenClassification,
        XLMRobertaTokenizerFast,
    )

    backend = _xlmr_unigram()
    tokenizer = XLMRobertaTokenizerFast(
        tokenizer_object=backend, add_prefix_space=True, model_max_length=MAX_LEN
    )
    config = XLMRobertaConfig(
        vocab_size=backend.get_vocab_size(),
        intermediate_size=64,
        max_position_embeddings=MAX_LEN + 2,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **TINY,
        **_labels(scheme),
    )
    return XLMRobertaForTokenClassification(config), tokenizer


def _deberta_v2(scheme: str):
    from transformers import (
        DebertaV2Config,
        DebertaV2ForTokenClassification,
        DebertaV2TokenizerFast,
    )

    backend = _deberta_unigram()
    # transformers 5: DebertaV2TokenizerFast is DebertaV2Tokenizer, a tokenizers backend that
    # needs no spm.model and takes tokenizer_object (its __init__ then resets the post-processor
    # to [CLS] $A [SEP]; on reload it rebuilds the Unigram from tokenizer.json's vocabulary).
    tokenizer = DebertaV2TokenizerFast(
        tokenizer_object=backend,
        do_lower_case=False,
        split_by_punct=False,
        add_prefix_space=True,
        model_max_length=MAX_LEN,
    )
    # deberta-v3-small's config, scaled down
    config = DebertaV2Config(
        vocab_size=backend.get_vocab_size(),
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=64,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        layer_norm_eps=1e-7,
        max_relative_positions=-1,
        position_biased_input=False,
        type_vocab_size=0,
        pad_token_id=0,
        **TINY,
        **_labels(scheme),
    )
    return DebertaV2ForTokenClassification(config), tokenizer


FAMILIES: dict[str, Callable] = {
    "bert-uncased": _bert(lowercase=True),
    "bert-cased": _bert(lowercase=False),
    "distilbert": _distilbert,
    "roberta": _roberta,
    "xlm-roberta": _xlm_roberta,
    "deberta-v2": _deberta_v2,
    "electra": _electra,
}


def _head_inputs(model, tokenizer, texts: Sequence[str]):
    """(n_sub_tokens, hidden) what `model.classifier` sees for the texts' sub-tokens (specials
    and padding left out)."""
    captured = []
    hook = model.classifier.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    try:
        enc = tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        keep = (enc.pop("special_tokens_mask") == 0) & enc["attention_mask"].bool()
        model(**enc)
    finally:
        hook.remove()
    return captured[0][keep]


def _spread_head(model, tokenizer, scheme: str, seed: int) -> None:
    """Make the random classifier head useful for tests (in place, under no_grad).

    Random init gives logits of std ~0.1, mostly one label. The weights are scaled up
    (HEAD_SCALE: logits of std ~2-3, confident, well spread) and the bias drawn at random, so a
    sentence gets several entities of several types; with an O label, O's bias is then moved so
    that about O_FRACTION of the corpus' sub-tokens are O whatever the number of labels (17 in
    BIOES would otherwise leave O ~3 %). Scaling does not move argmax ties away from fp32 noise
    (it scales the noise too), so bias draws are repeated until every sub-token of ALL_SENTENCES
    has a top-2 logit gap of at least MIN_MARGIN (random ties are otherwise ~1e-6 apart in
    ~2500 sub-tokens). Other texts get no such guarantee."""
    import torch

    head = model.classifier
    head.weight.mul_(HEAD_SCALE)
    weight = head.weight
    corpus = _head_inputs(model, tokenizer, CORPUS[:64]) @ weight.T
    tests = _head_inputs(model, tokenizer, ALL_SENTENCES) @ weight.T
    generator = torch.Generator().manual_seed(seed + 7)
    for _ in range(MAX_BIAS_DRAWS):
        bias = torch.randn(head.bias.shape, generator=generator) * 0.5
        if SCHEMES[scheme][0] == "O":
            logits = corpus + bias
            lead = logits[:, 1:].max(dim=-1).values - logits[:, 0]
            bias[0] += torch.quantile(lead, O_FRACTION)
        top2 = (tests + bias).topk(2, dim=-1).values
        if float((top2[:, 0] - top2[:, 1]).min()) >= MIN_MARGIN:
            head.bias.copy_(bias)
            return
    raise RuntimeError(
        f"no classifier bias in {MAX_BIAS_DRAWS} draws gives margins >= {MIN_MARGIN}"
    )


def build(family: str, directory: Path, scheme: str = "iob2", seed: int = 0) -> Path:
    """Build a tiny random `family` token classifier with SCHEMES[scheme] labels into
    `directory` (created), saved with save_pretrained like a Hub checkpoint; return it."""
    import torch

    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; expected one of {list(FAMILIES)}")
    if scheme not in SCHEMES:
        raise KeyError(f"unknown scheme {scheme!r}; expected one of {list(SCHEMES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, tokenizer = FAMILIES[family](scheme)
    model.eval()
    with torch.no_grad():
        _spread_head(model, tokenizer, scheme, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------------------------
# Spans.


def load(directory: Path):
    """(model, tokenizer) reloaded with the Auto classes, the model in eval mode."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(directory)
    model.eval()
    return model, AutoTokenizer.from_pretrained(directory)


def pipeline_spans(
    directory: Path, texts: Sequence[str], aggregation: str = "first"
) -> list[list[dict]]:
    """The transformers token-classification pipeline's entities per text, as
    {start, end, label, score} dicts."""
    import warnings

    from transformers import pipeline

    tagger = pipeline(
        "token-classification",
        model=str(directory),
        tokenizer=str(directory),
        aggregation_strategy=aggregation,
        device="cpu",
    )
    out = []
    with warnings.catch_warnings():
        # "Tokenizer does not support real words, using fallback heuristic" (BPE, Unigram)
        warnings.simplefilter("ignore", UserWarning)
        for text in texts:
            out.append(
                [
                    {
                        "start": int(e["start"]),
                        "end": int(e["end"]),
                        "label": e["entity_group"],
                        "score": float(e["score"]),
                    }
                    for e in tagger(text)
                ]
            )
    return out


def label_role(label: str) -> tuple[str, str]:
    """(role, type) of a label: O -> ("O", ""); B-/I-/E-/S-/L-/U- X -> (B/I/E/S, X), BILOU's L-
    and U- spelled as E and S; anything else (PER, LABEL_3) -> ("I", label), the IO scheme."""
    if label == "O":
        return "O", ""
    prefix, sep, kind = label.partition("-")
    if sep and kind and prefix in "BIESLU" and len(prefix) == 1:
        return {"L": "E", "U": "S"}.get(prefix, prefix), kind
    return "I", label


def decode(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities (type, first word, last word inclusive) of per-word labels in any scheme, with
    lenient repair: B- opens; I- continues an open entity of its type, else opens one; E-/L-
    closes the open entity of its type (else is a one-word entity); S-/U- is a one-word entity;
    O closes. IOB1 and IOB2 decode alike; IO: consecutive words of the same type merge."""
    found: list[list] = []
    open_entity: list | None = None
    for i, label in enumerate(labels):
        role, kind = label_role(label)
        if role == "O":
            open_entity = None
            continue
        if role in ("B", "S") or open_entity is None or open_entity[0] != kind:
            open_entity = [kind, i, i]
            found.append(open_entity)
        else:
            open_entity[2] = i
        if role in ("E", "S"):
            open_entity = None
    return [tuple(e) for e in found]


def word_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """The pipeline's words of `text` (start, end), for a fast tokenizer (or a directory)."""
    import numpy as np

    if not hasattr(tokenizer, "backend_tokenizer"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    enc = tokenizer(
        text,
        return_tensors="np",
        truncation=True,
        return_special_tokens_mask=True,
        return_offsets_mapping=True,
    )
    scores = np.zeros((enc["input_ids"].shape[1], 1))
    return [(w["start"], w["end"]) for w in _words(tokenizer, text, enc, scores)]


def _words(tokenizer, text: str, enc, scores) -> list[dict]:
    """Sub-tokens grouped into words exactly as TokenClassificationPipeline.gather_pre_entities
    and aggregate_words group them."""
    model = tokenizer.backend_tokenizer.model
    word_aware = bool(getattr(model, "continuing_subword_prefix", None))
    ids = enc["input_ids"][0].tolist()
    offsets = enc["offset_mapping"][0].tolist()
    special = enc["special_tokens_mask"][0].tolist()
    words: list[dict] = []
    for idx, (token_id, (start, end), is_special) in enumerate(
        zip(ids, offsets, special, strict=True)
    ):
        if is_special:
            continue
        token = tokenizer.convert_ids_to_tokens(token_id)
        if word_aware:  # WordPiece ("##"): a token longer or shorter than its text is a subword
            is_subword = len(token) != len(text[start:end])
        else:  # the fallback heuristic: no space just before or at the token's start
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if token_id == tokenizer.unk_token_id:
            is_subword = False
        if words and is_subword:
            words[-1]["end"] = end
            words[-1]["scores"].append(scores[idx])
        else:
            words.append({"start": start, "end": end, "scores": [scores[idx]]})
    return words


def scheme_oracle_spans(
    directory: Path, texts: Sequence[str], aggregation: str = "first"
) -> list[list[dict]]:
    """Reference spans from the same PyTorch logits as the pipeline: the pipeline's tokenization
    and word grouping, each word labelled by its first sub-token's argmax ("first"; "max" and
    "average" as the pipeline does them), spans decoded by the labels' scheme (`decode`); a span
    runs from its first word's start to its last word's end, its score is the mean of its words'
    label probabilities (as the pipeline's)."""
    import numpy as np
    import torch

    model, tokenizer = load(directory)
    id2label = model.config.id2label
    out = []
    for text in texts:
        enc = tokenizer(
            text,
            return_tensors="pt",
            truncation=True,
            return_special_tokens_mask=True,
            return_offsets_mapping=True,
        )
        inputs = {
            k: v for k, v in enc.items() if k not in ("special_tokens_mask", "offset_mapping")
        }
        with torch.no_grad():
            logits = model(**inputs).logits[0].numpy()
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = shifted / shifted.sum(axis=-1, keepdims=True)
        words = _words(tokenizer, text, enc, scores)
        labels, probs = [], []
        for word in words:
            if aggregation == "first":
                word_scores = word["scores"][0]
            elif aggregation == "max":
                word_scores = max(word["scores"], key=lambda s: s.max())
            elif aggregation == "average":
                word_scores = np.nanmean(np.stack(word["scores"]), axis=0)
            else:
                raise ValueError(f"unsupported aggregation {aggregation!r}")
            best = int(word_scores.argmax())
            labels.append(id2label[best])
            probs.append(word_scores[best])
        out.append(
            [
                {
                    "start": words[first]["start"],
                    "end": words[last]["end"],
                    "label": kind,
                    "score": float(np.mean(np.nanmean(probs[first : last + 1]))),
                }
                for kind, first, last in decode(labels)
            ]
        )
    return out


def same_spans(a: list[list[dict]], b: list[list[dict]], atol: float = 1e-5) -> list[int]:
    """Indices of the texts whose spans differ (start, end, label exact; score within atol)."""
    differ = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if len(x) != len(y) or any(
            (s["start"], s["end"], s["label"]) != (t["start"], t["end"], t["label"])
            or abs(s["score"] - t["score"]) > atol
            for s, t in zip(x, y, strict=True)
        ):
            differ.append(i)
    return differ


def reload_mismatches(directory: Path, texts: Sequence[str]) -> list[int]:
    """Indices of texts that the transformers tokenizer (AutoTokenizer, rebuilt by its class)
    and the raw tokenizer.json (`tokenizers.Tokenizer.from_file`, what a bundle ships) encode
    differently (ids or offsets)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(directory)
    raw = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    bad = []
    for i, text in enumerate(texts):
        a = hf(text, return_offsets_mapping=True)
        b = raw.encode(text)
        if a["input_ids"] != b.ids or [tuple(o) for o in a["offset_mapping"]] != b.offsets:
            bad.append(i)
    return bad


def min_margin(directory: Path, texts: Sequence[str]) -> float:
    """The smallest gap between a sub-token's two largest logits over `texts` (specials
    excluded): how far the model is from an argmax tie that fp32 noise could flip."""
    import torch

    model, tokenizer = load(directory)
    smallest = float("inf")
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, return_special_tokens_mask=True)
        keep = ~enc.pop("special_tokens_mask")[0].bool()
        with torch.no_grad():
            top2 = model(**enc).logits[0][keep].topk(2, dim=-1).values
        if len(top2):
            smallest = min(smallest, float((top2[:, 0] - top2[:, 1]).min()))
    return smallest
