"""The README's Python examples run as written, and the repository is self-contained.

* Every fenced ``python`` block of README.md is executed, in order, in one fresh
  namespace shared by the blocks (later blocks may use names of earlier ones), in a
  fresh folder holding a tiny checkpoint trained here at the path the README loads
  (``bptt_jax.load("runs/lm/checkpoint.bptt")``), so the trained-model example runs too.
* No file of the repository refers to a path outside it: the source material the
  project was started from lived in a sibling folder that is not part of it, so
  any path into that folder is a dangling reference.
* Every relative Markdown link (and embedded image) of README.md, docs/ and
  benchmarks/README.md points to a file that exists.
* Every option of a ``bptt-jax COMMAND ...`` line in them is one COMMAND takes, and
  the tag example's character count is the count of the characters it shows.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bptt_jax.app.cli.main import build_parser
from bptt_jax.app.training.config import TrainConfig
from bptt_jax.app.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Built from parts so that this file does not match its own pattern.
_OUTSIDE = "sha" + "red"
OUTSIDE_PATH = re.compile(rf"(?:\.\./{_OUTSIDE}\b|\b{_OUTSIDE}/)")

FENCED_PYTHON = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return FENCED_PYTHON.findall(text)


#: Where the README's example loads a checkpoint from, relative to the current folder.
LOADED = re.compile(r"""bptt_jax\.load\(["']([^"']+)["']\)""")

#: The text of the tiny model trained for the README: it holds every character the
#: README's examples encode.
TINY_TEXT = "def main():\n    return add(a, b)  # sum\n\n\nx = main()\n" * 4


def _train_tiny(path: Path, root: Path) -> None:
    """A 3-step language model at ``path`` (the README's own run takes minutes)."""
    (root / "tiny.py").write_text(TINY_TEXT)
    config = TrainConfig(text=(str(root / "tiny.py"),), steps=3, batch_size=2, seq_len=8,
                         hidden_size=8, eval_every=0, save_every=0,
                         out=str(path.parent))  # fmt: skip
    saved = train(config, progress=False, echo=lambda s: None).checkpoint
    assert Path(saved).resolve() == path.resolve(), f"the README loads {path}, saved {saved}"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert blocks, "README.md has no ```python block"
    monkeypatch.chdir(tmp_path)
    for path in sorted(set(LOADED.findall(text))):
        _train_tiny(tmp_path / path, tmp_path)
    namespace: dict = {"__name__": "readme_example"}
    for i, block in enumerate(blocks, start=1):
        code = compile(block, f"README.md, python block {i}", "exec")
        exec(code, namespace)


def test_python_blocks_are_found_in_order():
    text = "x\n```python\na = 1\n```\n```sh\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def _checked_files() -> list[Path]:
    patterns = [
        "README.md",
        "pyproject.toml",
        "docs/**/*.md",
        "bptt_jax/**/*.py",
        "benchmarks/**/*",
        "tests/**/*.py",
        ".ci/*",
    ]
    files = {p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(files)


def _is_text(data: bytes) -> bool:
    return b"\0" not in data


def test_no_file_refers_to_a_path_outside_the_repository():
    files = _checked_files()
    assert README in files and any(p.suffix == ".py" for p in files)
    offending = []
    for path in files:
        data = path.read_bytes()
        if not _is_text(data):
            continue
        text = data.decode("utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE_PATH.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offending, "paths outside the repository:\n" + "\n".join(offending)


def test_the_outside_path_pattern():
    outside = _OUTSIDE
    assert OUTSIDE_PATH.search(f"see `{outside}/MATH.md`")
    assert OUTSIDE_PATH.search(f"../{outside}/seed")
    assert OUTSIDE_PATH.search(f"(../{outside})")
    assert not OUTSIDE_PATH.search(f"a {outside} machine, {outside} by the loss")


@pytest.mark.parametrize(
    "page",
    [README, *sorted((ROOT / "docs").glob("**/*.md")), ROOT / "benchmarks" / "README.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_markdown_links_point_to_existing_files(page: Path):
    missing = []
    for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


# --------------------------------------------------------------------------- the docs' commands

DOC_PAGES = [README, *sorted((ROOT / "docs").glob("**/*.md")), ROOT / "benchmarks" / "README.md"]
# "bptt-jax train: error: ..." is a message the command prints, not a command line
COMMAND_LINE = re.compile(r"(?:bptt-jax|python3? -m bptt_jax)[ \t]+([a-z]+)(?![:\w])([^`\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _subcommand_options() -> dict[str, set[str]]:
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(sub._option_string_actions) for name, sub in commands.choices.items()}


def documented_command_lines(text: str) -> list[tuple[str, list[str]]]:
    """``(command, [--flags])`` of every ``bptt-jax COMMAND ...`` of a Markdown text
    (inline code and code blocks; a shell comment after `` #`` ends the line)."""
    found = []
    for command, rest in COMMAND_LINE.findall(text):
        found.append((command, FLAG.findall(rest.split(" #", 1)[0])))
    return found


def test_documented_command_lines_are_found():
    text = (
        "run `bptt-jax train --steps 5 --out r` then\n```sh\nbptt-jax bench -K 3  # no --out\n```"
    )
    assert documented_command_lines(text) == [("train", ["--steps", "--out"]), ("bench", [])]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_of_a_documented_command_line_exists(page: Path):
    options = _subcommand_options()
    wrong = [
        f"{command} {flag}"
        for command, flags in documented_command_lines(page.read_text(encoding="utf-8"))
        if command in options  # "bptt-jax train" etc.; prose such as "bptt-jax is" is not one
        for flag in flags
        if flag not in options[command]
    ]
    assert not wrong, f"{page.relative_to(ROOT)} shows options the commands lack: {wrong}"


def test_the_tag_example_counts_the_characters_it_shows():
    # docs/training.md's `bptt-jax tag` example: its accuracy line counts the
    # characters of the file it shows (each source line and its newline).
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    block = re.search(r"```\n\$ bptt-jax tag [^\n]*\n(legend: [^\n]*)\n(.*?)\n```", text, re.S)
    assert block, "the tag example is gone"
    lines = block.group(2).splitlines()
    accuracy = re.fullmatch(r"accuracy against tokenize: [0-9.]+% of (\d+) chars.*", lines[-1])
    assert accuracy, lines[-1]
    source = lines[:-1][0::2]  # each source line is followed by its line of letters
    assert int(accuracy.group(1)) == sum(len(line) + 1 for line in source), source
