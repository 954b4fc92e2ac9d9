"""docs/api.md's "Signatures" list is the public API: every name, every parameter.

The list is read from the Markdown (the fenced block after ``## Signatures``), so a
new keyword is added by editing the doc: this test then compares, for every line,

* ``NAME(PARAMETERS)`` / ``CLASS.METHOD(PARAMETERS)``: the parameters' names, kinds
  (positional or keyword, ``*args``, keyword-only after ``*``, ``**kwargs``) and
  defaults (the doc's expression evaluated in the object's own module, then ``==``)
  with :func:`inspect.signature` of the real object (a method without ``self``);
* ``NAME = EXPRESSION``: the value;
* ``class NAME(BASE)``: that it is a subclass of ``BASE`` (exceptions have no
  signature to compare);

and that the top-level names listed are exactly ``bptt_jax.__all__`` and the methods
listed for each class are exactly the public functions it defines. Annotations are
not compared: the doc gives the types in prose.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import re
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bptt_jax

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCK = re.compile(r"^## Signatures\n.*?^```text\n(.*?)^```", re.DOTALL | re.MULTILINE)
ENTRY = re.compile(r"^(?:class (?P<cls>\w+)\((?P<base>\w+)\)|(?P<name>[\w.]+)"
                   r"(?:\((?P<params>.*)\)| = (?P<value>.*)))$", re.DOTALL)  # fmt: skip


class Entry(NamedTuple):
    name: str  # "bptt", "TrainedModel.sample"
    kind: str  # "call", "value", "class"
    text: str  # the parameters, the value's expression, or the base class


def entries(doc: str) -> list[Entry]:
    """The lines of the Signatures block, continuation lines (indented) joined."""
    match = BLOCK.search(doc)
    assert match, "docs/api.md has no ## Signatures section with a ```text block"
    lines: list[str] = []
    for line in match.group(1).splitlines():
        if line.startswith((" ", "\t")) and lines:
            lines[-1] += " " + line.strip()
        elif line.strip():
            lines.append(line.strip())
    out = []
    for line in lines:
        m = ENTRY.match(line)
        assert m, f"docs/api.md: cannot read the signature line {line!r}"
        if m["cls"]:
            out.append(Entry(m["cls"], "class", m["base"]))
        elif m["params"] is not None:
            out.append(Entry(m["name"], "call", m["params"]))
        else:
            out.append(Entry(m["name"], "value", m["value"]))
    return out


def resolve(name: str):
    obj = bptt_jax
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _namespace(obj, default=None) -> dict:
    """Where a default's expression is evaluated: the module that defines ``obj``, and
    the class of the real ``default`` by its name (``Remedy(...)``)."""
    module = sys.modules.get(getattr(obj, "__module__", ""), bptt_jax)
    kind = type(default)
    return {"jnp": jnp, "np": np, "jax": jax, **vars(module), kind.__name__: kind}


class Param(NamedTuple):
    name: str
    kind: inspect._ParameterKind
    default: str | None  # the doc's expression, or None for no default


def documented_params(text: str) -> list[Param]:
    """The parameters of ``f(TEXT)``, read by Python's own parser."""
    fn = ast.parse(f"def f({text}): pass").body[0]
    a = fn.args
    P = inspect.Parameter
    out = []
    positional = [*a.posonlyargs, *a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, d) in enumerate(zip(positional, defaults, strict=True)):
        kind = P.POSITIONAL_ONLY if i < len(a.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        out.append(Param(arg.arg, kind, None if d is None else ast.unparse(d)))
    if a.vararg:
        out.append(Param(a.vararg.arg, P.VAR_POSITIONAL, None))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append(Param(arg.arg, P.KEYWORD_ONLY, None if d is None else ast.unparse(d)))
    if a.kwarg:
        out.append(Param(a.kwarg.arg, P.VAR_KEYWORD, None))
    return out


def real_params(name: str, obj) -> list[inspect.Parameter]:
    params = list(inspect.signature(obj).parameters.values())
    if "." in name and params and params[0].name == "self":  # a method, as called on an object
        params = params[1:]
    return params


def mismatches(entry: Entry) -> list[str]:
    """What differs between a documented line and the object; empty when they agree."""
    obj = resolve(entry.name)
    if entry.kind == "class":
        base = getattr(builtins, entry.text, None) or resolve(entry.text)
        return [] if inspect.isclass(obj) and issubclass(obj, base) else [f"not a {entry.text}"]
    if entry.kind == "value":
        value = eval(entry.text, _namespace(obj))
        return [] if value == obj else [f"is {obj!r}, documented {entry.text}"]
    doc, real = documented_params(entry.text), real_params(entry.name, obj)
    if [(p.name, p.kind) for p in doc] != [(p.name, p.kind) for p in real]:
        return [f"parameters {_show(real)}, documented ({entry.text})"]
    return [
        f"{r.name}: default {r.default!r}, documented {d.default}"
        for d, r in zip(doc, real, strict=True)
        if not _same_default(d.default, r.default, obj)
    ]


def _same_default(documented: str | None, real, obj) -> bool:
    if documented is None or real is inspect.Parameter.empty:
        return documented is None and real is inspect.Parameter.empty
    value = eval(documented, _namespace(obj, real))
    return value is real or (type(value) is type(real) and value == real)


def _show(params: list[inspect.Parameter]) -> str:
    return (
        "(" + ", ".join(str(p.replace(annotation=inspect.Parameter.empty)) for p in params) + ")"
    )


DOCUMENTED = entries(DOC.read_text(encoding="utf-8"))


@pytest.mark.parametrize("entry", DOCUMENTED, ids=[e.name for e in DOCUMENTED])
def test_the_documented_signature_is_the_real_one(entry):
    assert not mismatches(entry), f"docs/api.md, {entry.name}: " + "; ".join(mismatches(entry))


def test_every_public_name_is_documented_once():
    names = [e.name for e in DOCUMENTED if "." not in e.name]
    assert len(names) == len(set(names)), "a name listed twice"
    assert sorted(names) == sorted(bptt_jax.__all__)


def test_every_public_method_of_a_public_class_is_documented():
    listed = {e.name for e in DOCUMENTED}
    public = {
        f"{name}.{attr}"
        for name in bptt_jax.__all__
        if inspect.isclass(cls := getattr(bptt_jax, name))
        for attr, value in vars(cls).items()
        if not attr.startswith("_") and inspect.isfunction(value)
    }
    assert public and public <= listed, f"undocumented: {sorted(public - listed)}"
    assert {n for n in listed if "." in n} <= public, "a documented method does not exist"


# --------------------------------------------------------------------------- the checks themselves


def _sample(a, b=2, *c, d, e=None, **f):
    """A function to compare documented lines with."""


def test_a_wrong_name_kind_or_default_is_found(monkeypatch):
    monkeypatch.setattr(bptt_jax, "_sample", _sample, raising=False)
    assert mismatches(Entry("_sample", "call", "a, b=2, *c, d, e=None, **f")) == []
    for wrong in ("a, b=3, *c, d, e=None, **f", "a, b=2, *c, d=1, e=None, **f",
                  "a, b=2, *, d, e=None", "a, b=2, *c, e=None, d, **f", "a, *c, d, e=None, **f",
                  "a, b=2.0, *c, d, e=None, **f"):  # fmt: skip
        assert mismatches(Entry("_sample", "call", wrong)), wrong


def test_values_and_classes_are_compared(monkeypatch):
    assert mismatches(Entry("activations", "value", '("tanh", "sigmoid", "relu")')) == []
    assert mismatches(Entry("activations", "value", '("tanh",)'))
    assert mismatches(Entry("CheckpointError", "class", "Exception")) == []
    assert mismatches(Entry("CheckpointError", "class", "ValueError"))


def test_wrapped_lines_are_joined_and_bad_lines_refused():
    doc = "## Signatures\n\n```text\nf(a,\n    b=1)\nx = (1,\n    2)\nclass E(Exception)\n```\n"
    assert entries(doc) == [Entry("f", "call", "a, b=1"), Entry("x", "value", "(1, 2)"),
                            Entry("E", "class", "Exception")]  # fmt: skip
    with pytest.raises(AssertionError, match="cannot read"):
        entries("## Signatures\n```text\nf a b\n```\n")
