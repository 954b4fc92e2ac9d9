"""Sampling (one jitted lax.scan) and tagging with a model from a checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bptt_jax.api.init import init_params
from bptt_jax.app.inference.sample import sample
from bptt_jax.app.inference.tagging import format_tags, legend, predict_tags
from bptt_jax.app.io.corpus import TOKEN_LETTERS, TOKEN_TYPES, DataError, Vocab
from bptt_jax.app.training.checkpoint_schema import Model
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.core.params import Params
from bptt_jax.core.rnn import forward_core

CHARS = "abcdefgh ij\n"


def _model(task="lm", scale=4.0, seed=0):
    vocab = Vocab(CHARS)
    C = vocab.size if task == "lm" else len(TOKEN_TYPES)
    p = init_params(jax.random.key(seed), vocab.size, 16, num_classes=C)
    # Larger weights than at initialisation: peaked, well-separated next-character
    # distributions, as in a trained model.
    params = Params(p.U * scale, p.V * scale, p.W * scale, p.b, p.c)
    return Model(params, vocab, task, TrainConfig(task=task, hidden_size=16), step=0)


def _greedy_by_loop(model, prime, length):
    """Greedy decoding as a plain NumPy loop of the seed's equations."""
    U, V, W, b, c = (np.asarray(p, np.float64) for p in model.params)
    h = np.zeros(16)
    out = []
    for x in model.vocab.encode(prime, strict=True):
        h = np.tanh(U @ h + W[:, x] + b)
    for _ in range(length):
        z = V @ h + c
        z[model.vocab.unknown] = -np.inf  # sampling never emits the unknown id
        x = int(np.argmax(z))
        out.append(x)
        h = np.tanh(U @ h + W[:, x] + b)
    return model.vocab.decode(out)


def test_same_seed_same_text_other_seed_other_text():
    model = _model()
    a = sample(model, "ab", 120, temperature=1.0, seed=3)
    b = sample(model, "ab", 120, temperature=1.0, seed=3)
    c = sample(model, "ab", 120, temperature=1.0, seed=4)
    assert len(a) == 120 and set(a) <= set(CHARS)  # never the unknown character
    assert a == b and a != c


def test_temperature_zero_is_the_greedy_argmax_sequence():
    model = _model()
    greedy = sample(model, "hi", 40, temperature=0.0, seed=0)
    assert greedy == _greedy_by_loop(model, "hi", 40)


@pytest.mark.parametrize("seed", [0, 1], ids=["seed0", "seed1"])
def test_temperature_to_zero_tends_to_greedy(seed):
    model = _model()
    cold = sample(model, "hi", 40, temperature=1e-6, seed=seed)
    assert cold == sample(model, "hi", 40, temperature=0.0)
    assert sample(model, "hi", 40, temperature=1.0, seed=seed) != cold  # not always greedy


@pytest.mark.slow  # compiles top-k sampling at another length
def test_top_k_one_is_greedy_at_any_temperature():
    model = _model()
    assert sample(model, "a", 30, temperature=2.0, top_k=1, seed=5) == sample(
        model, "a", 30, temperature=0.0
    )


@pytest.mark.slow  # compiles top-k sampling
def test_top_k_draws_only_among_the_k_most_likely():
    model = _model(scale=0.5)  # flat distributions: without top-k anything goes
    text = sample(model, "a", 60, temperature=1.0, top_k=2, seed=1)
    ids = list(model.vocab.encode("a" + text))
    h0 = jnp.zeros((1, 16), jnp.float32)
    _, z = forward_core(model.params, jnp.asarray([ids[:-1]], jnp.int32), h0)
    z = np.array(z[0])
    z[:, model.vocab.unknown] = -np.inf  # never a candidate
    ranks = [int((z[t] > z[t, ids[t + 1]]).sum()) for t in range(60)]
    assert max(ranks) <= 1
    assert len(set(text)) > 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prime="a", length=0), "--length must be a positive"),
        (dict(prime="a", length=-3), "--length must be a positive"),
        (dict(prime="aéb€", length=5), r"2 character\(s\) not in the model's vocabulary: 'é'"),
        (dict(prime="a", length=5, top_p=0.0), r"--top-p must be in \(0, 1\]"),
        (dict(prime="a", length=5, top_p=1.5), r"--top-p must be in \(0, 1\]"),
        (dict(prime="a", length=5, top_k=99), "--top-k must be between 1 and"),
        (dict(prime="a", length=5, temperature=-1.0), "--temperature must be >= 0"),
    ],
    ids=["length_zero", "length_negative", "prime_outside_vocab", "top_p_zero", "top_p_above_one",
         "top_k", "negative_temperature"],
)  # fmt: skip
def test_bad_sampling_requests_are_data_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        sample(_model(), **kwargs)


def test_a_tagging_model_does_not_sample_and_a_language_model_does_not_tag():
    with pytest.raises(DataError, match="not a language model"):
        sample(_model(task="tag"), "a", 5)
    with pytest.raises(DataError, match="--task tag"):
        predict_tags(_model(task="lm"), "abc")


def test_predict_tags_is_the_argmax_of_the_forward_pass():
    model = _model(task="tag")
    text = "abc\nzz hi"  # 'z' is outside the vocabulary: read as the unknown id
    tags = predict_tags(model, text)
    ids = model.vocab.encode(text)
    assert ids[4] == model.vocab.unknown
    _, z = forward_core(model.params, jnp.asarray(ids)[None], jnp.zeros((1, 16), jnp.float32))
    np.testing.assert_array_equal(tags, np.argmax(np.asarray(z[0]), axis=-1))


def test_an_empty_prime_starts_from_the_zero_state():
    model = _model()
    assert sample(model, "", 30, temperature=0.0) == _greedy_by_loop(model, "", 30)


def test_format_tags_puts_letters_under_each_line():
    text = "if a:\n  b\n"
    tags = np.array([2, 2, 0, 1, 3, 0, 0, 0, 1, 0])
    assert format_tags(text, tags, color=False) == "if a:\nkk no\n  b\n  n\n"
    assert TOKEN_LETTERS[2] == "k"


@pytest.mark.parametrize("diff", [False, True], ids=["plain", "diff"])
def test_the_legend_names_what_the_letter_lines_show(diff):
    # Every type once, whitespace among them: the legend's keys are exactly the
    # marks under the text (the whitespace class is a blank there, not its "_").
    text = "".join("ab c"[i % 4] for i in range(len(TOKEN_TYPES) + 1)) + "\n"
    tags = np.arange(len(TOKEN_TYPES) + 1) % len(TOKEN_TYPES)
    truth = np.roll(tags, 1) if diff else None
    lines = format_tags(text, tags, color=False, truth=truth).splitlines()
    keys = dict(item.split("=", 1) for item in legend(False, diff).split(": ", 1)[1].split("  "))
    shown = set(lines[1]) - {" "}
    assert shown == {TOKEN_LETTERS[i] for i in range(1, len(TOKEN_TYPES))}
    assert shown | {"blank"} | ({"^"} if diff else set()) == set(keys)
    assert keys["blank"] == TOKEN_TYPES[0] and lines[1][0] == " "  # tags[0] is whitespace
    assert "_" not in "".join(lines[1:])


def test_format_tags_colours_runs_of_one_type():
    text = "if a"
    out = format_tags(text, np.array([2, 2, 0, 1]), color=True)
    assert out == "\033[1;35mif\033[0m \033[36ma\033[0m"
