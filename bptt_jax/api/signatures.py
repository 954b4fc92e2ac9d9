"""Parameter lists stated once: a public function that takes another's parameters says so.

:func:`shares` gives a wrapper the signature of the function whose parameters it takes
(less some, plus some keyword-only ones of its own), so the defaults and their
documentation are written in one place while ``help()``, ``inspect.signature`` and
``docs/api.md`` still show every keyword. A call is bound against that signature
first, so an unknown or missing argument is the usual one-line ``TypeError`` naming
the function called.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable


def shares(source: Callable, *, drop: tuple[str, ...] = (), extra: dict | None = None):
    """Decorator: the decorated function takes ``source``'s parameters.

    Args:
      source: the function whose parameter list (names, kinds, defaults, annotations)
        is the decorated one's.
      drop: names of ``source``'s parameters the decorated function does not take.
      extra: ``{name: (annotation, default)}`` of keyword-only parameters of the
        decorated function's own, after ``source``'s.

    The decorated function is written ``def f(params, xs, ..., **keywords)``: it is
    called with every argument by name, the defaults applied, and passes on what it
    does not use; its docstring says whose parameters it takes.
    """
    kept = [p for p in inspect.signature(source).parameters.values() if p.name not in drop]
    own = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)
           for name, (annotation, default) in (extra or {}).items()]  # fmt: skip

    def decorate(fn: Callable) -> Callable:
        signature = inspect.Signature(
            kept + own, return_annotation=inspect.signature(fn).return_annotation
        )

        parameters = signature.parameters.values()
        positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        required = {p.name for p in parameters if p.default is p.empty}
        defaults = {p.name: p.default for p in parameters if p.default is not p.empty}

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = dict(zip(positional, args, strict=False))  # too many args: bind says so
            named = given.keys() | kwargs.keys()
            if (len(args) > len(positional) or not kwargs.keys() <= signature.parameters.keys()
                    or given.keys() & kwargs.keys() or not required <= named):  # fmt: skip
                try:  # the exact message of the mistake (a call that binds never gets here)
                    signature.bind(*args, **kwargs)
                except TypeError as e:
                    raise TypeError(f"{fn.__name__}() {e}") from None
            return fn(**(defaults | given | kwargs))  # every argument by name; source's defaults

        wrapper.__signature__ = signature
        return wrapper

    return decorate
