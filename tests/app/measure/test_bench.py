"""bptt-jax bench: its table, its agreement check and its exit status (timings are not tested)."""

import pytest

from bptt_jax.api import options
from bptt_jax.app.cli import bench as bench_command
from bptt_jax.app.cli.main import build_parser, main
from bptt_jax.app.measure import bench as _bench
from bptt_jax.app.measure.bench import flops, run_bench
from bptt_jax.core.schedule import SCHEDULES, default_chunk

TINY = ["-K", "7", "-H", "5", "-B", "2", "-T", "6", "--repeats", "2"]


# Each run compiles every method anew (5 s even for the default): slow tier.
@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [[], ["--recompute", "--chunk", "4", "--unroll", "2"], ["--matmul-dtype", "bfloat16"],
     ["--dtype", "float64"]],
    ids=["default", "recompute_chunk_unroll", "bf16", "float64"],
)  # fmt: skip
def test_bench_prints_every_method_and_agrees(argv, capsys):
    assert main(["bench", *TINY, *argv]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:5]}
    assert list(rows) == ["hand", "autodiff", "naive"]
    assert rows["autodiff"][-1] == "(reference)"
    assert "hand vs autodiff:" in out and "DISAGREES" not in out
    assert f"{flops(7, 5, 2, 6) / 1e9:.3f} GFLOP" in out


@pytest.mark.slow  # recompiles every method
def test_bench_exits_1_when_the_hand_gradient_is_wrong(monkeypatch, capsys):
    real = _bench.bptt_core

    def wrong(*args, **kwargs):  # dU off by 1 %
        E, grads, dh0, h_T = real(*args, **kwargs)
        return E, grads._replace(U=1.01 * grads.U), dh0, h_T

    monkeypatch.setattr(_bench, "bptt_core", wrong)
    assert main(["bench", *TINY]) == 1
    captured = capsys.readouterr()
    assert "DISAGREES" in captured.out
    assert captured.err.startswith("bptt-jax bench: error: the gradients disagree")
    assert len(captured.err.strip().splitlines()) == 1 and "hand " in captured.err


def _report(hand_error: float) -> _bench.BenchReport:
    rows = [_bench.BenchRow("hand", 1e-3, 0.1, 0, hand_error),
            _bench.BenchRow("autodiff", 2e-3, 0.1, 0, None),
            _bench.BenchRow("naive AD", 3e-3, 0.1, 0, 1e-7)]  # fmt: skip
    return _bench.BenchReport((7, 5, 2, 6), "float32", "scan", "cpu", 2, rows, 1e-5)


def test_a_disagreement_is_one_line_on_stderr_naming_what_disagreed(monkeypatch, capsys):
    monkeypatch.setattr(bench_command, "run_bench", lambda *args, **kwargs: _report(3e-2))
    assert main(["bench", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "bptt-jax bench: error: the gradients disagree with autodiff: relative error hand "
        "3.0e-02 above the tolerance 1e-05 (float32, scan)"
    ]
    monkeypatch.setattr(bench_command, "run_bench", lambda *args, **kwargs: _report(float("nan")))
    assert main(["bench", *TINY]) == 1
    assert "hand nan above" in capsys.readouterr().err


class _Traced(Exception):  # noqa: N818 (a stop, not an error)
    """Raised by the spy once the hand BPTT's options are seen: nothing is compiled."""


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("recompute", [False, True], ids=["store", "recompute"])
def test_bench_times_the_hand_bptt_at_the_backends_defaults(backend, recompute, monkeypatch):
    # bench is documented to time the hand BPTT as bptt_jax.bptt runs it: chunk and
    # unroll from core/schedule.py's row of the backend (docs/performance.md).
    seen = {}

    def spy(*args, **kwargs):
        seen.update(chunk=kwargs["options"].chunk, unroll=kwargs["options"].unroll)
        raise _Traced

    monkeypatch.setattr(_bench, "bptt_core", spy)
    monkeypatch.setattr(options.jax, "default_backend", lambda: backend)
    B, T = 2, 64
    with pytest.raises(_Traced):
        run_bench(vocab_size=7, hidden_size=5, batch=B, steps=T, recompute=recompute)
    assert seen == {"chunk": default_chunk(T, B, recompute, backend),
                    "unroll": SCHEDULES[backend].unroll}  # fmt: skip
    with pytest.raises(_Traced):  # explicit values win
        run_bench(vocab_size=7, hidden_size=5, batch=B, steps=T, chunk=3, unroll=2)
    assert seen == {"chunk": 3, "unroll": 2}


def test_bench_leaves_chunk_and_unroll_to_the_backend_by_default():
    args = build_parser().parse_args(["bench"])
    assert args.chunk is None and args.unroll is None


def test_bench_rejects_a_bad_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--chunk", "0"])
    assert exit_info.value.code == 1
    assert "--chunk: must be >= 1, got 0" in capsys.readouterr().err


def test_flop_count_written_out():
    # 6·T·B·H·(H + C): three H×H and three H×C products per step and sequence.
    K, H, B, T = 10, 4, 3, 5
    per_step = 3 * 2 * H * H + 3 * 2 * H * K
    assert flops(K, H, B, T) == T * B * per_step
    assert flops(K, H, B, T, C=2) == T * B * (3 * 2 * H * H + 3 * 2 * H * 2)
