"""Tiny random-weight models with real, in-process trained tokenizers, saved as Hugging Face folders.

Every folder holds ``config.json``, ``model.safetensors`` and the tokenizer files, so it loads with the Auto
classes exactly as a Hub checkpoint would. Weights are random (seeded); tokenizers are trained with the
``tokenizers`` library on :data:`CORPUS`, a few dozen sentences rich in gendered, racial and religious words.

Tokenizer classes changed in transformers v5: a model-specific class (``BertTokenizer``, ``RobertaTokenizer``,
``GPT2Tokenizer``, ``LlamaTokenizer``) rebuilds its normalizer / pre-tokenizer / decoder from its own
hard-coded pipeline and takes only the vocabulary, merges and post-processor from ``tokenizer.json``.
The BERT, RoBERTa and GPT-2 tokenizers here are therefore trained with exactly the pipeline of their class;
the Llama one (byte-level BPE, unlike the real SentencePiece-style ``LlamaTokenizer``) is saved as a generic
``TokenizersBackend`` so that ``tokenizer.json`` is loaded verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizer,
    TokenizersBackend,
)

SEED = 1234
HIDDEN = 32
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 128
VOCAB_SIZE = 400

CORPUS: tuple[str, ...] = (
    "He is a doctor and she is a nurse.",
    "She is a doctor and he is a nurse.",
    "The man went to work while the woman stayed home.",
    "The woman went to work while the man stayed home.",
    "His mother is an engineer and her father is a teacher.",
    "Her mother is a teacher and his father is an engineer.",
    "My father cooked dinner for the family.",
    "My mother fixed the car in the garage.",
    "The boy played with dolls and the girl played football.",
    "The girl played with dolls and the boy played football.",
    "A husband and a wife bought a house together.",
    "The king and the queen visited the hospital.",
    "My brother is a nurse and my sister is a pilot.",
    "Her son became a scientist; his daughter became a lawyer.",
    "The gentleman thanked the lady for her help.",
    "Men and women both enjoy reading novels.",
    "The jewish family celebrated the holiday together.",
    "The christian family celebrated the holiday together.",
    "The muslim family celebrated the holiday together.",
    "A jewish doctor opened a clinic in the city.",
    "A christian teacher volunteered at the school.",
    "A muslim engineer designed the new bridge.",
    "The church, the mosque and the synagogue stand on one street.",
    "People of every religion are welcome here.",
    "The black student won the science prize.",
    "The white student won the science prize.",
    "The asian student won the science prize.",
    "A black woman runs the largest company in town.",
    "A white man works as a nurse at the hospital.",
    "An asian man is a famous musician.",
    "The hispanic chef cooked a wonderful meal.",
    "The african american lawyer argued the case.",
    "The european tourist asked for directions.",
    "Black and white neighbours shared the garden.",
    "He said that she was right.",
    "She said that he was right.",
    "The doctor asked the nurse to help him.",
    "The nurse asked the doctor to help her.",
    "The secretary typed the letter for the manager.",
    "The manager typed the letter for the secretary.",
    "Our grandmother told stories about her childhood.",
    "Our grandfather told stories about his childhood.",
    "The programmer fixed the bug before lunch.",
    "The homemaker planned the weekly meals.",
    "Every person deserves respect and kindness.",
    "The capital of France is Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Children learn quickly when they are curious.",
    "The scientist explained her theory to the students.",
    "The engineer explained his design to the workers.",
)

# Special tokens of each tokenizer, in vocabulary order (ids 0, 1, ...).
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
GPT2_SPECIALS = ["<|endoftext|>"]
LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]


def _train_wordpiece() -> dict[str, int]:
    """Train a lowercase WordPiece vocabulary with BERT's normalizer and pre-tokenizer."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok.get_vocab()


def _train_byte_bpe(specials: list[str]) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: no prefix space) with ``specials`` first in the vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The 256-byte alphabet and the specials come first; 240 merges make frequent words single tokens.
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(specials) + 240,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _vocab_and_merges(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _save(model: PreTrainedModel, tokenizer: TokenizersBackend, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _bert_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab=_train_wordpiece(), model_max_length=MAX_POSITIONS)


def _bert_config(vocab_size: int, pad_id: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=pad_id,
    )


def build_bert(folder: Path) -> Path:
    """``BertForMaskedLM`` with a WordPiece ``BertTokenizer`` ([CLS] [SEP] [MASK] [PAD] [UNK])."""
    tok = _bert_tokenizer()
    torch.manual_seed(SEED)
    model = BertForMaskedLM(_bert_config(len(tok), tok.pad_token_id))
    return _save(model, tok, folder)


def build_bert_encoder(folder: Path) -> Path:
    """A bare ``BertModel`` (no MLM head, like the bundled MiniLM) with the same tokenizer as :func:`build_bert`."""
    tok = _bert_tokenizer()
    torch.manual_seed(SEED)
    model = BertModel(_bert_config(len(tok), tok.pad_token_id))
    return _save(model, tok, folder)


def build_roberta(folder: Path) -> Path:
    """``RobertaForMaskedLM`` with a byte-level BPE ``RobertaTokenizer`` (<s> </s> <mask> <pad>)."""
    vocab, merges = _vocab_and_merges(_train_byte_bpe(ROBERTA_SPECIALS))
    tok = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN,
        # RoBERTa positions start after the padding index, hence the + 2.
        max_position_embeddings=MAX_POSITIONS + 2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(SEED)
    return _save(RobertaForMaskedLM(config), tok, folder)


def build_gpt2(folder: Path) -> Path:
    """``GPT2LMHeadModel`` with a byte-level BPE ``GPT2Tokenizer`` (<|endoftext|>, no pad token)."""
    vocab, merges = _vocab_and_merges(_train_byte_bpe(GPT2_SPECIALS))
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=MAX_POSITIONS)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(SEED)
    return _save(GPT2LMHeadModel(config), tok, folder)


def build_llama(folder: Path) -> Path:
    """``LlamaForCausalLM`` with a byte-level BPE that prepends <s>; pad = eos = </s>."""
    backend = _train_byte_bpe(LLAMA_SPECIALS)
    bos_id, eos_id = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    tok = TokenizersBackend(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=MAX_POSITIONS,
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    return _save(LlamaForCausalLM(config), tok, folder)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "bert": build_bert,
    "bert_encoder": build_bert_encoder,
    "roberta": build_roberta,
    "llama": build_llama,
    "gpt2": build_gpt2,
}


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny model under ``root`` (one sub-folder each) and return name -> folder."""
    return {name: build(root / name) for name, build in BUILDERS.items()}
