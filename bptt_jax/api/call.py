"""A public call's checks, from its keywords as the caller gave them: the model and the
arrays (:func:`.validate.prepare`), then the one :class:`~bptt_jax.core.options.Options`
(:func:`.options.build_options`). For the functions whose parameter list is another's
(:mod:`.signatures`): they pass their keywords on whole."""

from __future__ import annotations

from ..core.options import Options
from .options import build_options
from .validate import Inputs, Model, prepare

#: The keywords :func:`.validate.prepare` takes; every other one is an option of the backward.
_INPUT_KEYWORDS = ("dh_T", "lengths", "mask", "reduction", "activation", "resets")


def take(fn: str, params, xs, ys, h0, keywords: dict, **flags) -> tuple[Model, Inputs, Options]:
    """``(params, inputs, options)`` of a public call ``fn`` with ``keywords``.

    ``flags``: ``need_ys``/``defer`` for :func:`.validate.prepare`, ``schedule`` for
    :func:`.options.build_options`.
    """
    keywords = dict(keywords)
    inputs = {k: keywords.pop(k) for k in _INPUT_KEYWORDS if k in keywords}
    prepare_flags = {k: flags.pop(k) for k in ("need_ys", "defer") if k in flags}
    params, inp = prepare(params, xs, ys, h0, **inputs, **prepare_flags)
    options = build_options(inp.activation, params, inp.xs, fn, **keywords, **flags)
    return params, inp, options
