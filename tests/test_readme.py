"""The README and the docs stay true: every Python block runs as written, every link and cited
docs section exists, and CI runs the README's test command verbatim."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Folders that hold no project text of their own (environments, build outputs, caches).
NOT_PROJECT_TEXT = {".git", ".venv", "build", "dist", "outputs", "__pycache__", ".pytest_cache"}

# A fenced block: its info string (language, then optional words) and its body.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
# An info string "python skip: <reason>" keeps a block from running; the reason is mandatory.
SKIP = re.compile(r"^python\s+skip:\s*(\S.*)$")
# A block that imports PyTorch, which an environment with only the jax extra lacks.
USES_TORCH = re.compile(r"^\s*(import|from) (torch|rmi_torch)\b", re.MULTILINE)
# Markdown links and images to files of the repository (not to web pages).
LINK = re.compile(r"\]\((?!https?://|mailto:)([^)\s]+)\)")
# A docs page cited from anywhere in the repository, with an optional section anchor.
DOCS_CITATION = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            info = match.group(1).strip()
            if info.split(" ", 1)[0] == "python":
                line = text.count("\n", 0, match.start()) + 1
                blocks.append(Block(page, line, info, match.group(2)))
    return blocks


BLOCKS = python_blocks()


def test_the_pages_have_python_blocks() -> None:
    """Guards the block parser: a README with no block found would test nothing."""
    assert sum(block.page.name == "README.md" for block in BLOCKS) >= 4


# Full tier: the blocks train and compile like the examples they are (the checks of the pages'
# structure, links and commands below stay in the default tier).
@pytest.mark.full
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_python_block_runs(block: Block) -> None:
    """Each block runs on its own, in a fresh namespace, exactly as printed."""
    skip = SKIP.match(block.info)
    if skip:
        pytest.skip(skip.group(1))
    assert block.info == "python", f"{block.id}: unknown info string {block.info!r}"
    if USES_TORCH.search(block.code) and importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed")
    before = _process_wide_settings()
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})  # noqa: S102
    # A block that changed process-wide settings would change what later tests compute.
    assert _process_wide_settings() == before, f"{block.id} changed a process-wide setting"


def _process_wide_settings() -> tuple[object, ...]:
    import jax

    settings: tuple[object, ...] = (
        jax.config.jax_enable_x64,
        jax.config.jax_default_matmul_precision,
    )
    if importlib.util.find_spec("torch") is not None:
        import torch

        settings += (torch.get_float32_matmul_precision(), torch.get_default_dtype())
    return settings


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    anchors: set[str] = set()
    text = FENCE.sub("", page.read_text())
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_point_at_files_and_sections_that_exist(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in github_anchors(linked):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def project_text_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if path.suffix in {".py", ".md", ".toml", ".cff"} and not parts & NOT_PROJECT_TEXT:
            # Build metadata, and the environments .ci/run makes (.venv-newest, .venv-oldest).
            if not any(p.endswith(".egg-info") or p.startswith(".venv") for p in parts):
                files.append(path)
    return files


def test_every_cited_docs_section_exists() -> None:
    """Code, tests and pages cite ``docs/<page>.md#<section>``: each must be there."""
    broken = []
    for path in project_text_files():
        for page, anchor in DOCS_CITATION.findall(path.read_text()):
            cited = ROOT / "docs" / page
            if not cited.is_file() or (anchor and anchor not in github_anchors(cited)):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}{'#' * bool(anchor)}{anchor}")
    assert not broken, broken


def test_nothing_cites_a_specification_outside_the_repository() -> None:
    """The semantics are docs/semantics.md: a reader cannot check a cited file that is not here.
    (This file names the old citation in its pattern, so it is left out of the search.)"""
    citing = [
        str(path.relative_to(ROOT))
        for path in project_text_files()
        if path != Path(__file__).resolve() and re.search(r"\bSPEC\b", path.read_text())
    ]
    assert not citing, citing


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_is_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("examples/train_flax.py")
    assert commands[1].endswith("-m pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci_lines
