"""The user documentation stays short, complete and consistent with the repository and the CLI.

* README.md is at most 250 lines and shows the two commands a new user runs (``make demo``, ``make test``).
* Every relative link in README.md and docs/*.md points to a file or folder of the repository, and every
  ``#anchor`` into a Markdown file names one of its headings (GitHub's heading slugs).
* Every ``peft-debias ...`` command in a ``bash`` block parses with the current argument parser.
* Every ``python`` block of README.md runs, in order, on tiny models (the model ids swapped for their folders)
  after the commands before it made the folders it reads.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# [text](target) and ![alt](target); the target ends at whitespace or ')' (titles are not used here)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(kept))  # a code span may wrap onto the next line


def relative_links(text: str) -> list[str]:
    """Link targets that are not absolute URLs (http:, https:, mailto:, ...)."""
    return [t for t in LINK.findall(_prose(text)) if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # drops `*()[]:.,'/ and friends; keeps letters, digits, _, -
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown file's headings, numbered as GitHub numbers repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """The relative links of ``page`` (its ``text``, default: the file's) that do not resolve, with the reason."""
    problems = []
    text = page.read_text(encoding="utf-8") if text is None else text
    for target in relative_links(text):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        try:
            resolved.relative_to(REPO)
        except ValueError:
            problems.append(f"{target}: outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{target}: no such file")
            continue
        if anchor and resolved.suffix == ".md":
            target_text = text if not path_part else resolved.read_text(encoding="utf-8")
            if anchor not in anchors(target_text):
                problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO)}")
    return problems


def test_readme_is_short_and_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md is for users: move reference material into docs/"
    for command in ("make demo", "make test"):
        assert re.search(rf"^{command}\b", text, re.MULTILINE), f"README.md lacks the command line `{command}`"


def test_the_docs_exist_and_the_readme_links_each() -> None:
    names = {p.name for p in DOCS}
    assert {"cli.md", "evaluation.md", "experiments.md", "architecture.md"} <= names
    linked = {Path(t.partition("#")[0]).name for t in relative_links(README.read_text(encoding="utf-8"))}
    assert names <= linked, f"README.md does not link {sorted(names - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_catches_a_broken_link() -> None:
    page = REPO / "docs" / "cli.md"
    planted = page.read_text(encoding="utf-8") + (
        "\nSee [nowhere](no-such-page.md), [there](#no-such-heading) and [elsewhere](../README.md#no-such-heading).\n"
    )
    assert broken_links(page, planted) == [
        "no-such-page.md: no such file",
        "#no-such-heading: no heading #no-such-heading in docs/cli.md",
        "../README.md#no-such-heading: no heading #no-such-heading in README.md",
    ]


def test_slugs_follow_github() -> None:
    text = "\n".join(
        [
            "# The demo (`make demo`)",
            "## Measured here (2 CPU cores)",
            "### SmolLM2 gender: `invariance: both`",
            "# A",
            "# A",
        ]
    )
    assert anchors(text) == {
        "the-demo-make-demo",
        "measured-here-2-cpu-cores",
        "smollm2-gender-invariance-both",
        "a",
        "a-1",
    }


def _shell_commands(text: str) -> list[str]:
    """The command lines of the ``bash`` blocks, continuation lines joined."""
    commands, block, pending = [], None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```\s*(\w*)", line)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block != "bash":
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    return commands


def cli_invocations() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every ``peft-debias`` command in a bash block of the README or the docs."""
    found = []
    for page in PAGES:
        for command in _shell_commands(page.read_text(encoding="utf-8")):
            words = shlex.split(command, comments=True)
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
                words.pop(0)
            if words and Path(words[0]).name == "peft-debias":
                found.append((page.name, words[1:]))
    return found


def test_the_documented_commands_parse(capsys: pytest.CaptureFixture[str]) -> None:
    from peft_debias.cli.main import build_parser

    invocations = cli_invocations()
    assert len(invocations) >= 15
    parser = build_parser()
    failures = []
    for page, argv in invocations:
        try:
            parser.parse_args(argv)
        except SystemExit:
            failures.append(f"{page}: peft-debias {' '.join(argv)}: {capsys.readouterr().err.strip()}")
    assert failures == []


def python_blocks(text: str) -> list[str]:
    """The code of the ``python`` blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.mark.integration
def test_the_readme_python_snippets_run(tiny_models, data_dir, tmp_path, monkeypatch, hub_offline) -> None:
    from peft_debias import train_adapter
    from peft_debias.cli.main import main

    from support.tiny_models import CORPUS

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text("\n".join(CORPUS * 2) + "\n")
    bert, llama = str(tiny_models["bert"]), str(tiny_models["llama"])
    for axis in ("gender", "race"):  # what the bash blocks before the snippets write
        train_adapter(base=bert, axis=axis, corpus="corpus.txt", output=f"adapters/bert-{axis}-lora", max_steps=2)
    biased = ["biased", "--base", llama, "--corpus", "corpus.txt", "--method", "lora", "--output", "biased/"]
    assert main([*biased, "--max-steps", "2", "--no-progress"]) == 0
    swaps = {'"bundled:smollm2"': repr(llama), '"bert-base-uncased"': repr(bert),
             '"../shared/data"': repr(str(data_dir)), "max_steps=300": "max_steps=3"}  # fmt: skip
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    for number, block in enumerate(blocks, 1):
        for old, new in swaps.items():
            block = block.replace(old, new)
        assert "bundled:" not in block and "bert-base-uncased" not in block, "a model id the test does not swap"
        exec(compile(block, f"README.md python block {number}", "exec"), {})
    sidecar = json.loads(Path("adapters/smollm2-gender-lora/debias_config.json").read_text())
    assert [c["source"] for c in sidecar["corpus"]] == ["corpus.txt"]
    assert Path("debiased/config.json").is_file()
