"""The hand-gradient path never calls autodiff: autodiff is the referee only.

The rule, over every module of the package (none is listed by hand): autodiff
(``jax.grad``, ``vjp``, ``jvp``, ...) appears only in the referees,
``bptt_jax/referees/``, and in the application's verification commands
(``check``, ``bench``); and only the public referee wrappers
(``api/referees.py``) and the application (its ``check``/``bench`` commands and
``train --verify-every``) may import the referees. The numerical core and the
gradient-flow lab import neither.
"""

import ast
import pathlib

import pytest

import bptt_jax

PACKAGE = pathlib.Path(bptt_jax.__file__).parent
MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
AUTODIFF = {"grad", "value_and_grad", "vjp", "jvp", "linearize", "custom_jvp",
            "jacfwd", "jacrev", "hessian", "linear_transpose"}  # fmt: skip
# The referees, and the commands that time or report against autodiff.
MAY_USE_AUTODIFF = ("referees/", "app/measure/bench.py", "app/measure/check.py")
MAY_IMPORT_REFEREES = ("referees/", "api/referees.py", "app/", "__init__.py")


def autodiff_used(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / module).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in AUTODIFF:
            used.add(ast.unparse(node))
        if isinstance(node, ast.ImportFrom):
            used.update(a.name for a in node.names if a.name in AUTODIFF)
    return used


def referees_imported(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "referees" in node.module:
            found.add(f"from {'.' * node.level}{node.module} import ...")
    return found


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith(MAY_USE_AUTODIFF)])
def test_module_outside_the_referees_uses_no_autodiff(module):
    used = autodiff_used(module)
    assert not used, f"{module} uses autodiff: {sorted(used)}"


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith(MAY_IMPORT_REFEREES)])
def test_hand_path_module_does_not_import_the_referees(module):
    found = referees_imported(module)
    assert not found, f"{module} imports the referees: {sorted(found)}"


def test_the_check_is_not_vacuous():
    # The referee module does use autodiff: the scan above would find it.
    assert "jax.value_and_grad" in autodiff_used("referees/autodiff.py")
    assert referees_imported("api/referees.py")
