"""bptt-jax diagnose: the PNGs exist and are valid, the report and the exit status."""

import jax
import numpy as np
import pytest
from helpers import assert_valid_png

from bptt_jax.app.cli.main import main
from bptt_jax.app.measure.diagnose import run_diagnose
from bptt_jax.lab.tasks import REMEDIES


@pytest.mark.slow  # a sweep and a delay-task training
def test_run_diagnose_writes_every_plot_and_reports(tmp_path):
    # The shapes of tests/test_diagnostics.py's sweep and tests/test_tasks.py's
    # training: in one pytest process, the compilations are shared.
    report = run_diagnose(
        tmp_path / "out", vocab_size=8, hidden_size=6, batch=2, steps=10, sweep_scales=(0.5, 2.0),
        delays=(1, 3), iterations=20, remedies=REMEDIES[1:2],
    )  # fmt: skip
    names = ["delta_heatmap.png", "decay.png", "cell_flow.png", "sweep.png", "delay_task.png",
             "delay_grad_norm.png"]  # fmt: skip
    assert [p.name for p in report.paths] == names
    for p in report.paths:
        assert p.parent == tmp_path / "out"
        assert_valid_png(p)
    assert "γ predicts" in report.text and "tanh" in report.text and "relu" in report.text
    assert REMEDIES[1].label in report.text
    assert not jax.config.jax_enable_x64  # float64 only inside the diagnosis


@pytest.mark.slow  # compiles the diagnosis for its own shapes
def test_diagnose_command_line(tmp_path, capsys):
    out = tmp_path / "plots"
    argv = ["diagnose", "-o", str(out), "-K", "4", "-H", "3", "-B", "2", "-T", "5",
            "--activation", "relu", "--init", "identity", "--no-sweep"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "relu, init=identity" in text and "sweep" not in text
    assert "rnn (relu)" in text and "lstm, forget bias 1" in text and "its c path" in text
    assert sorted(p.name for p in out.iterdir()) == ["cell_flow.png", "decay.png",
                                                     "delta_heatmap.png"]  # fmt: skip
    for p in out.iterdir():
        assert_valid_png(p)
    # ‖U‖₂ of the identity is 1; the line the report prints says so.
    line = next(x for x in text.splitlines() if "‖U‖₂ =" in x)
    assert float(line.split("‖U‖₂ =")[1].split()[0]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("argv", "code", "match"),
    [(["--spectral-radius", "0"], 1, "--spectral-radius: must be a finite number > 0"),
     (["--spectral-radius", "-1"], 1, "got -1.0"),
     (["--init", "xavier"], 1, "invalid choice: 'xavier'"),
     (["--init", "spectral"], 1, "init='spectral' needs spectral_radius")],
    ids=["radius_0", "radius_negative", "unknown_init", "spectral_without_radius"],
)  # fmt: skip
def test_diagnose_bad_input_exits_1_with_a_clear_message(argv, code, match, tmp_path, capsys):
    try:
        status = main(["diagnose", "-o", str(tmp_path), "--no-sweep", "-T", "3", *argv])
    except SystemExit as e:  # argparse's own rejection
        status = e.code
    assert status == code
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_heatmap_shows_zero_gradients_without_failing(tmp_path):
    # A dead ReLU network: every δ is 0. The plot must still be written (no log(0) crash).
    from bptt_jax import Params, gradient_flow
    from bptt_jax.app.measure.plots import plot_decay, plot_heatmap

    H, K = 3, 4
    params = Params(*(np.zeros(s, np.float32) for s in [(H, H), (K, H), (H, K), (H,), (K,)]))
    params = params._replace(b=np.full((H,), -1.0, np.float32))
    flow = gradient_flow(params, np.arange(4), np.arange(4), activation="relu")
    assert not np.any(np.asarray(flow.delta_norms))
    for plot, name in ((plot_heatmap, "h.png"), (plot_decay, "d.png")):
        assert_valid_png(plot(flow, tmp_path / name, what="dead relu"), min_size=(100, 100))
