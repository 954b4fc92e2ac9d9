"""Run in a subprocess by tests/test_parallel_train.py, with 8 simulated CPU devices.

The real training path (``train()`` and ``bptt-jax train``) on 1 and on 8
devices: parameters after N steps, resume of a checkpoint across device
counts, and the errors for device counts that cannot work. XLA_FLAGS must be
set before JAX is imported, so this runs in its own process and prints one
JSON object of measurements for the tests to assert on.
"""

import contextlib
import dataclasses
import io
import json
import os
import sys
import tempfile

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bptt_jax.app.cli.main import main  # noqa: E402
from bptt_jax.app.io.corpus import load_corpus  # noqa: E402
from bptt_jax.app.training.config import TrainConfig, TrainingError  # noqa: E402
from bptt_jax.app.training.loop import train  # noqa: E402
from bptt_jax.referees.tolerances import max_relative_error  # noqa: E402

STEPS = 8
# A constant rate: the resume checks stop at STEPS / 2 by --steps, which would reshape
# a cosine schedule (a schedule's resume is tested in tests/app/training/test_loop.py).
TINY = dict(max_files=12, batch_size=16, seq_len=32, hidden_size=48, eval_every=0,
            save_every=0, val_chars=8192, steps=STEPS, schedule="constant",
            warmup=0)  # fmt: skip
CLI_TINY = ["--max-files", "12", "--hidden-size", "48", "--seq-len", "32", "--val-chars",
            "8192", "--no-progress", "--eval-every", "0", "--save-every", "0"]  # fmt: skip


def rel(a, b):
    """Over the leaves of (params, optimizer state, h): the worst max-norm relative
    difference, the measure of ``bptt_jax.referees.tolerances``."""
    return max_relative_error((a.params, a.opt_state, a.h), (b.params, b.opt_state, b.h))


def rel_parts(a, b):
    """The same, for the parameters, the optimizer state and h separately."""
    return {
        "params": max_relative_error(a.params, b.params),
        "opt_state": max_relative_error(a.opt_state, b.opt_state),
        "h": max_relative_error(a.h, b.h),
    }


out = {"devices": len(jax.devices())}
corpus = load_corpus(max_files=TINY["max_files"])
quiet = dict(corpus=corpus, progress=False, echo=lambda s: None)
tmp = tempfile.mkdtemp()


def run(name, devices, dtype, optimizer="momentum", **kw):
    config = TrainConfig(**TINY, dtype=dtype, optimizer=optimizer, out=f"{tmp}/{name}")
    config = dataclasses.replace(config, **kw)
    return train(config, devices=devices, **quiet)


# N steps on 8 devices = N steps on 1 device, in float64 and in float32, for the
# optimizers whose update is linear in the gradient (tests/app/training/test_parallel_train.py
# says why Adam is compared after one step only).
runs = {}
for dtype in ("float64", "float32"):
    for optimizer in ("sgd", "momentum"):
        one = run(f"{dtype}-{optimizer}-1", 1, dtype, optimizer)
        # --verify-every on 8 devices checks the hand gradient of the whole batch.
        eight = run(f"{dtype}-{optimizer}-8", 8, dtype, optimizer, verify_every=4)
        out[f"{dtype}_{optimizer}_verified"] = eight.history.verified
        runs[dtype, optimizer] = one, eight
        out[f"{dtype}_{optimizer}_8_vs_1"] = rel_parts(eight.state, one.state)
        out[f"{dtype}_{optimizer}_steps"] = [one.state.step, eight.state.step]
        dtypes = {str(p.dtype) for r in (one, eight) for p in (*r.state.params, r.state.h)}
        out[f"{dtype}_{optimizer}_dtypes"] = sorted(dtypes)
    # Adam: one step, its moments (the clipped gradient before the normalisation).
    one = run(f"{dtype}-adam-1", 1, dtype, "adam", steps=1)
    eight = run(f"{dtype}-adam-8", 8, dtype, "adam", steps=1)
    out[f"{dtype}_adam_8_vs_1"] = rel_parts(eight.state, one.state)
    out[f"{dtype}_adam_steps"] = [one.state.step, eight.state.step]
    out[f"{dtype}_adam_moments_nonzero"] = bool(
        max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(one.state.opt_state)) > 0
    )

one, eight = runs["float64", "momentum"]
out["devices_reported"] = [one.devices, eight.devices]
out["params_replicated_over"] = [len(p.sharding.device_set) for p in eight.state.params]
out["params_fully_replicated"] = all(p.sharding.is_fully_replicated for p in eight.state.params)
out["h_sharded_over"] = len(eight.state.h.sharding.device_set)
out["h_fully_replicated"] = eight.state.h.sharding.is_fully_replicated
# How far 8 steps move the state from 1 step: the equalities above are not trivial.
out["8_steps_vs_1_step"] = rel(eight.state, run("float64-1step", 8, "float64", steps=1).state)

# Resume across device counts (float64, momentum: an optimizer state to carry, and
# linear in the gradient): stop at STEPS/2 on one count, go on on the other.
for first, then in ((8, 1), (1, 8)):
    half = run(f"half-{first}", first, "float64", steps=STEPS // 2)
    config = dataclasses.replace(half.config, steps=STEPS)
    resumed = train(config, resume=half.checkpoint, devices=then, **quiet)
    reference = runs["float64", "momentum"][0 if then == 1 else 1]
    out[f"resume_{first}_on_{then}_vs_uninterrupted"] = rel(resumed.state, reference.state)
    out[f"resume_{first}_on_{then}_half_vs_uninterrupted"] = rel(half.state, reference.state)
    out[f"resume_{first}_on_{then}_step"] = resumed.state.step
    out[f"resume_{first}_on_{then}_devices"] = resumed.devices

# Device counts that cannot work: clear errors from train() and from the command line.
for name, devices, batch in (("indivisible", 8, 12), ("too_many", 9, 16)):
    try:
        run(name, devices, "float32", batch_size=batch)
        out[f"{name}_error"] = None
    except TrainingError as e:
        out[f"{name}_error"] = str(e)


def cli(*argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["train", *CLI_TINY, *argv])
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


out["cli_indivisible"] = cli("--batch-size", "12", "--devices", "8", "--out", f"{tmp}/c1")
out["cli_too_many"] = cli("--batch-size", "16", "--devices", "9", "--out", f"{tmp}/c2")
out["cli_default_devices"] = cli("--batch-size", "16", "--steps", "2", "--out", f"{tmp}/c3")
out["cli_2_devices"] = cli("--batch-size", "16", "--steps", "2", "--devices", "2",
                           "--out", f"{tmp}/c4")  # fmt: skip

json.dump(out, sys.stdout)
