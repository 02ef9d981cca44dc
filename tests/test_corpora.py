"""Corpus reading, sentence splitting and the CDA dataset pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_debias.cda.corpora import iter_sentences, sniff_text_format, split_sentences, utf8_error_at
from peft_debias.cda.dataset import CDAConfig, build_cda_dataset, flatten_for_lm
from peft_debias.core.errors import DebiasError


def test_split_sentences_respects_abbreviations_and_quotes() -> None:
    text = 'Mr. Darcy met J. Smith. "Is she here?" he asked. Yes! 3 people came.'
    assert split_sentences(text) == ["Mr. Darcy met J. Smith.", '"Is she here?" he asked.', "Yes!", "3 people came."]


def test_gutenberg_header_footer_and_italics_are_stripped(tmp_path: Path) -> None:
    book = tmp_path / "book.txt"
    book.write_bytes(
        "\ufeffThe Project Gutenberg eBook of Test\r\nHe is the licence holder.\r\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK TEST ***\r\n\r\nShe walked _very_ far\r\ninto the town. "
        "He stayed.\r\n\r\nThe end came.\r\n*** END OF THE PROJECT GUTENBERG EBOOK TEST ***\r\n"
        "He sells it.\r\n".encode()
    )
    assert list(iter_sentences(book)) == ["She walked very far into the town.", "He stayed.", "The end came."]


def test_wikitext_is_detokenised_and_headings_dropped(tmp_path: Path) -> None:
    wiki = tmp_path / "wiki.txt"
    wiki.write_text(
        ' = Robert = \n \n Robert is an actor . He had a guest @-@ starring role in " The Bill " in '
        "2,000 . His son 's <unk> won .\n"
    )
    assert sniff_text_format(wiki.read_text()) == "wikitext"
    assert list(iter_sentences(wiki)) == [
        "Robert is an actor.",
        'He had a guest-starring role in "The Bill" in 2,000.',
        "His son's <unk> won.",
    ]


def test_cda_dataset_counts_and_content(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "He went to the market today.\n\nThe dog slept all day long.\nShe is a good doctor.\n"
        "Short he.\nThe cat is on the mat here.\n"
    )
    ds, stats = build_cda_dataset(corpus, CDAConfig(axis="gender", shuffle=False))
    assert stats.sentences_in == 5
    assert (stats.sentences_kept, stats.pairs_produced, stats.dropped, stats.others_kept) == (2, 2, 1, 0)
    assert ds["text"] == ["He went to the market today.", "She is a good doctor."]
    assert ds["counterfactuals"] == [["She went to the market today."], ["He is a good doctor."]]
    assert flatten_for_lm(ds)["text"] == [
        "He went to the market today.",
        "She went to the market today.",
        "She is a good doctor.",
        "He is a good doctor.",
    ]
    everything, stats = build_cda_dataset(corpus, CDAConfig(axis="gender", keep_ratio=1.0, shuffle=False))
    assert stats.others_kept == 2 and len(everything) == 4


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"He owns {i} red cars now."}) + "\n" for i in range(50)))
    first, _ = build_cda_dataset(corpus, axis="gender", seed=1)
    again, _ = build_cda_dataset(corpus, axis="gender", seed=1)
    other, _ = build_cda_dataset(corpus, axis="gender", seed=2)
    assert first["id"] == again["id"] != other["id"]
    assert sorted(first["id"]) == list(range(50))


def test_csv_and_folder_sources(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('text,label\n"His mother is a teacher there.",1\n')
    (tmp_path / "b.txt").write_text("Her father is a teacher there.\n")
    (tmp_path / "notes.md").write_text("He is ignored because markdown is not a corpus file.\n")
    ds, _ = build_cda_dataset(tmp_path, axis="gender", shuffle=False)
    assert ds["counterfactuals"] == [["Her father is a teacher there."], ["His mother is a teacher there."]]
    with pytest.raises(DebiasError, match="no column 'body'"):
        build_cda_dataset(tmp_path / "a.csv", axis="gender", text_column="body")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"The dog sat on the mat today.\n", "no sentence mentioning axis 'gender'"),
        (b"\x00\x01\x02binary", "is binary"),
        ("He said caf\u00e9 here.".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_corpora(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DebiasError, match=message):
        build_cda_dataset(path, axis="gender")


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "He is here today."}\n{oops\n')
    with pytest.raises(DebiasError, match=r"c.jsonl:2 is not a JSON object"):
        build_cda_dataset(path, axis="gender")


def _past_the_head(suffix: str) -> bytes:
    """A corpus whose first 64 KiB are clean UTF-8 (multi-byte characters included) and whose line 2,001 has a
    Latin-1 byte: the check of the head passes, the stream fails."""
    line = {".jsonl": '{"text": "He met the café owner, number %d."}', ".csv": '"He met the café owner, number %d."'}
    template = line.get(suffix, "He met the café owner, number %d.")
    head = "text\n" if suffix == ".csv" else ""
    lines = [template % i for i in range(2000 - bool(head))]
    good = (head + "\n".join(lines) + "\n").encode()
    assert len(good) > 65536
    return good + template.replace("%d", "x").encode("latin-1") + b"\n"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_a_bad_byte_past_the_first_64_kib_names_line_and_byte(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_bytes(content := _past_the_head(suffix))
    byte = content.index("é".encode("latin-1"), len(content) - 100)
    with pytest.raises(DebiasError, match=rf"c\{suffix} is not UTF-8 text \(line 2001, byte {byte}\); convert it"):
        build_cda_dataset(path, axis="gender")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_utf8_error_at_finds_the_first_bad_byte_in_any_chunking(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes("a€b\nçé\n".encode() + b"x\xe2\x82y\n\xff")  # a cut euro sign on line 3, at byte 12
    assert utf8_error_at(path, chunk) == (3, 12)
    path.write_bytes("a€b\nçé\n€".encode())
    assert utf8_error_at(path, chunk) is None
    path.write_bytes("a€b\nç".encode()[:-1])  # the file ends inside a character
    assert utf8_error_at(path, chunk) == (2, 6)


def test_missing_corpus_and_offline_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DebiasError, match="not found"):
        build_cda_dataset(tmp_path / "nope.txt", axis="gender")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DebiasError, match="could not be loaded from the Hub"):
        build_cda_dataset("someone/no-such-dataset", axis="gender")


def test_bad_config_values() -> None:
    with pytest.raises(DebiasError, match="keep ratio"):
        CDAConfig(keep_ratio=1.5).validate()
    with pytest.raises(DebiasError, match="unknown axis"):
        CDAConfig(axis="nope").validate()


def test_wikitext2_real_files(data_dir: Path) -> None:
    ds, stats = build_cda_dataset(data_dir / "wikitext2" / "wiki.test.raw", axis="gender")
    assert stats.sentences_in > 8_000
    assert stats.sentences_kept == len(ds) > 1000
    assert stats.pairs_produced == stats.sentences_kept
    row = ds[0]
    assert row["counterfactuals"][0] != row["text"]
    assert " @-@ " not in row["text"] and "<unk>" not in row["text"]
