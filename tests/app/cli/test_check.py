"""bptt-jax check: the table, its verdict, and the exit status."""

import subprocess
import sys

import jax
import pytest

import bptt_jax
from bptt_jax.app.cli.main import main
from bptt_jax.app.measure import check as _check


@pytest.mark.slow  # finite differences on the default model
def test_check_passes_and_prints_a_row_per_parameter(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    for name, shape in [("U", "(16, 16)"), ("V", "(7, 16)"), ("W", "(16, 11)"),
                        ("b", "(16,)"), ("c", "(7,)")]:  # fmt: skip
        row = next(line for line in out.splitlines() if line.startswith(f"{name} "))
        assert shape in row and row.rstrip().endswith("ok")
    assert "all gradients agree" in out


@pytest.mark.parametrize(
    "argv",
    [
        # finite differences on the default model
        pytest.param(["--dtype", "float32", "--inputs", "dense"], marks=pytest.mark.slow),
        [
            "-T",
            "1",
            "-B",
            "1",
            "-K",
            "20",
            "-H",
            "3",
            "--cell",
            "rnn",
        ],  # the gated cells: test_cli_cells.py
    ],
    ids=["float32_dense", "tiny"],
)
def test_check_options(argv, capsys):
    assert main(["check", *argv]) == 0
    assert "all gradients agree" in capsys.readouterr().out


def _wrong_bptt(params, xs, ys, h0=None):
    # A deliberately wrong hand gradient: dU off by a factor of two.
    E, grads = bptt_jax.bptt(params, xs, ys, h0)
    return E, grads._replace(U=0.5 * grads.U)


@pytest.mark.slow  # finite differences on the default model
def test_check_report_flags_a_wrong_gradient():
    report = _check.run_check(grad_fn=_wrong_bptt)
    assert not report.ok
    rows = {r.name: r for r in report.rows}
    assert not rows["U"].ok and rows["U"].vs_autodiff == pytest.approx(0.5, rel=0.2)
    assert all(rows[n].ok for n in "VWbc")
    assert "FAIL" in report.format() and "DISAGREEMENT" in report.format()


@pytest.mark.slow  # compiles the check's three methods
def test_check_exits_nonzero_on_disagreement(monkeypatch, capsys):
    monkeypatch.setattr(_check, "bptt", _wrong_bptt)
    assert main(["check", "-T", "4"]) == 1
    assert "DISAGREEMENT" in capsys.readouterr().out


@pytest.mark.slow  # compiles the check's three methods for its own shape
def test_check_leaves_float64_off_afterwards():
    _check.run_check(steps=2)
    assert not jax.config.jax_enable_x64


@pytest.mark.parametrize("argv", [["check", "--steps", "-1"], ["check", "--dtype", "f16"], []],
                         ids=["negative_T", "bad_dtype", "no_command"])  # fmt: skip
def test_bad_command_lines_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1  # one convention for every error (see cli's docstring)
    err = capsys.readouterr().err
    assert err.startswith("bptt-jax") and ": error: " in err and len(err.splitlines()) == 1


@pytest.mark.slow  # a fresh Python imports JAX and compiles the check
def test_python_dash_m_runs_the_check():
    proc = subprocess.run(
        [sys.executable, "-m", "bptt_jax", "check", "-T", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "all gradients agree" in proc.stdout
