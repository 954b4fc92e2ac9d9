"""Corpus, vocabulary, token-type labels and streams of ``bptt-jax train``."""

import numpy as np
import pytest

from bptt_jax.app.io.corpus import (
    TOKEN_LETTERS,
    DataError,
    TextFile,
    Vocab,
    load_corpus,
    read_text,
    split_files,
    stdlib_files,
    stdlib_root,
    token_labels,
)
from bptt_jax.app.io.streams import Streams

# Known snippets and, per character, the token type tokenize gives it
# (_ whitespace, n name, k keyword, o operator, d number, s string, c comment, ? other).
SNIPPETS = {
    "if_comment": (
        "if x == 10:  # hi\n",
        "kk_n_oo_ddo__cccc_",
    ),
    "def_string": (
        "def f(a):\n    return 'a b' + a\n",
        "kkk_nonoo_____kkkkkk_sssss_o_n_",
    ),
    "float_and_keywords": (
        "y = not 2.5e3 or None\n",
        "n_o_kkk_ddddd_kk_kkkk_",
    ),
    "continuation_and_soft_keyword": (
        "match = 1 + \\\n  2\n",
        "nnnnn_o_d_o_?___d_",
    ),
    "triple_quoted_crlf": (
        'x = """a\r\nb"""\r\n',
        "n_o_ssssssssss__",
    ),
}


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_token_labels_of_known_snippets(name):
    text, expected = SNIPPETS[name]
    assert len(expected) == len(text)  # the expectation itself is well formed
    got = "".join(TOKEN_LETTERS[i] for i in token_labels(text))
    assert got == expected


def test_untokenizable_source_is_a_data_error():
    with pytest.raises(DataError, match="tokenize"):
        token_labels('x = """never closed\n')


def test_non_utf8_file_names_the_file_and_place(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"ok line\nsecond caf\xe9 line\n")
    with pytest.raises(DataError) as exc:
        read_text(path)
    msg = str(exc.value)
    assert str(path) in msg and "not UTF-8" in msg
    assert "byte 0xe9 at byte offset 18" in msg and "line 2, byte 11 of the line" in msg


def test_vocab_round_trip_and_unknown_characters():
    vocab = Vocab.from_text("hello world")
    ids = vocab.encode("low hero")
    assert vocab.decode(ids) == "low hero"
    assert vocab.size == len(set("hello world")) + 1
    assert vocab.encode("hi")[1] == vocab.unknown  # 'i' is not in the vocabulary
    with pytest.raises(DataError, match="'i'"):
        vocab.encode("hi", strict=True)


def test_split_is_deterministic_and_disjoint():
    files = stdlib_files()[:200]
    train, val = split_files(files)
    assert split_files(list(reversed(files)))[1] == list(reversed(val))  # order-independent
    assert {f.name for f in train}.isdisjoint({f.name for f in val})
    assert len(train) + len(val) == len(files)
    assert 0 < len(val) < len(files) // 5


def test_single_file_holds_out_its_end(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("abcdefghij" * 10)
    corpus = load_corpus([str(path)])
    assert len(corpus.train_ids) == 90 and len(corpus.val_ids) == 10


@pytest.mark.parametrize("kind", ["empty_files", "empty_folder"])
def test_empty_corpus_is_a_data_error(tmp_path, kind):
    if kind == "empty_files":
        (tmp_path / "a.txt").write_text("")
        (tmp_path / "b.txt").write_text("")
    with pytest.raises(DataError, match="empty corpus"):
        load_corpus([str(tmp_path)])


def test_missing_text_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_corpus([str(tmp_path / "nope.txt")])


def test_streams_are_consecutive_chunks_of_b_segments():
    ids = np.arange(1000, dtype=np.int32)
    s = Streams(ids, None, batch_size=4, seq_len=10)
    L = 1000 // 4
    assert s.num_chunks == (L - 1) // 10
    x0, y0 = s.chunk(0)
    x1, _ = s.chunk(1)
    np.testing.assert_array_equal(x0[:, 0], np.arange(4) * L)  # stream b starts segment b
    np.testing.assert_array_equal(y0, x0 + 1)  # lm: the label is the next character
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # chunk 1 continues chunk 0


def test_tag_streams_label_the_character_itself():
    ids = np.arange(100, dtype=np.int32)
    labels = (ids * 7) % 5
    s = Streams(ids, labels, batch_size=2, seq_len=5)
    x, y = s.chunk(3)
    np.testing.assert_array_equal(y, (x * 7) % 5)


def test_streams_too_short_is_a_data_error():
    with pytest.raises(DataError, match="too few"):
        Streams(np.arange(50, dtype=np.int32), None, batch_size=8, seq_len=10)


def test_stdlib_corpus_is_found_and_has_no_tests():
    files = stdlib_files()
    names = {f.name for f in files}
    assert "os.py" in names and "tokenize.py" in names
    assert not any(n.startswith("test/") or "/tests/" in n for n in names)
    assert all(isinstance(f, TextFile) and f.path.suffix == ".py" for f in files)


def test_tag_corpus_labels_align_with_tokenize():
    corpus = load_corpus(task="tag", max_files=6)
    assert corpus.num_classes == 8 and corpus.num_classes != corpus.vocab.size
    first = (stdlib_root() / corpus.train_files[0]).read_text()
    n = len(first)
    assert corpus.vocab.decode(corpus.train_ids[:n]) == first
    np.testing.assert_array_equal(corpus.train_labels[:n], token_labels(first))
    assert len(corpus.train_labels) == len(corpus.train_ids)
