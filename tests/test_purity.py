"""The hand-gradient path never calls autodiff: autodiff is the referee only."""

import ast
import pathlib

import pytest

import bptt_jax

PACKAGE = pathlib.Path(bptt_jax.__file__).parent
# Modules on the hand path: the model, the hand gradients, losses, activations, checks.
HAND_PATH = [
    "_bptt.py", "_rnn.py", "_params.py", "_validate.py", "_per_loss.py", "_activations.py",
    "_losses.py", "_deep.py", "_torch.py", "_parallel.py", "_diagnostics.py", "_init.py",
    "_clipping.py", "_tasks.py",
]  # fmt: skip
AUTODIFF = {"grad", "value_and_grad", "vjp", "jvp", "linearize", "custom_vjp", "custom_jvp",
            "jacfwd", "jacrev", "hessian", "linear_transpose"}  # fmt: skip


@pytest.mark.parametrize("module", HAND_PATH)
def test_hand_path_module_uses_no_autodiff(module):
    tree = ast.parse((PACKAGE / module).read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in AUTODIFF:
            used.add(ast.unparse(node))
        if isinstance(node, ast.ImportFrom):
            used.update(a.name for a in node.names if a.name in AUTODIFF)
        if isinstance(node, ast.ImportFrom) and node.module and "_reference" in node.module:
            used.add(f"from {node.module} import ...")
    assert not used, f"{module} uses autodiff: {sorted(used)}"


def test_the_check_is_not_vacuous():
    # The referee module does use autodiff: the scan above would find it.
    tree = ast.parse((PACKAGE / "_reference.py").read_text())
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "value_and_grad" in names
