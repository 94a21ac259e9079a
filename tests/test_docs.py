"""The README is a front door, and every link in it and in docs/ leads somewhere."""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert [page.name for page in PAGES[1:] if f"docs/{page.name}" not in readme] == []


DOTTED = re.compile(r"(?<![\w/.-])lenet(?:\.[A-Za-z_]\w*)+")
FILE_SUFFIXES = {"ckpt", "onnx", "pt2", "yaml", "json", "csv", "png", "md", "py", "log", "txt"}  # lenet.onnx: a file


def prose(path: Path) -> str:
    """What a file says to its reader: a page whole; a Python file's docstrings and comments; a YAML file's comments."""
    text = path.read_text()
    if path.suffix == ".md":
        return text
    if path.suffix == ".yaml":
        return "\n".join(line.partition("#")[2] for line in text.splitlines())
    tree = ast.parse(text)
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    docstrings = [ast.get_docstring(node, clean=False) or "" for node in nodes]
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return "\n".join([*docstrings, *(token.string for token in tokens if token.type == tokenize.COMMENT)])


def exists(name: str) -> bool:
    """Whether the dotted name is a module of src/lenet, or a name (a class's member one level down) defined or
    imported at the top of one."""
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES or parts[1] == "x":  # a file (lenet.onnx), or a placeholder (lenet.x.NAME)
        return True
    for length in range(len(parts), 0, -1):
        path = ROOT / "src" / Path(*parts[:length])
        module = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if module.is_file() or (path.is_dir() and length == len(parts)):
            return length == len(parts) or defines(ast.parse(module.read_text()).body, parts[length:])
    return False


def defines(body: list, names: list[str]) -> bool:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == names[0]:
            return len(names) == 1 or (isinstance(node, ast.ClassDef) and defines(node.body, names[1:]))
        targets = {
            ast.Assign: lambda n: [t.id for t in n.targets if isinstance(t, ast.Name)],
            ast.AnnAssign: lambda n: [n.target.id] if isinstance(n.target, ast.Name) else [],
            ast.Import: lambda n: [(a.asname or a.name).split(".")[0] for a in n.names],
            ast.ImportFrom: lambda n: [a.asname or a.name for a in n.names],
        }.get(type(node), lambda n: [])(node)
        if names[0] in targets:
            return len(names) == 1 or isinstance(node, ast.Import | ast.ImportFrom)  # a re-export: its own file says
    return False


READ = [*PAGES, *(path for folder in ("src", "tests", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))),
        *sorted((ROOT / "conf").rglob("*.yaml"))]  # fmt: skip


def test_every_dotted_lenet_name_exists():
    missing = [f"{path.relative_to(ROOT)}: {name}" for path in READ for name in DOTTED.findall(prose(path))
               if not exists(name)]  # fmt: skip
    assert missing == []


SECTION = re.compile(r'\b(README|docs/[\w-]+\.md)(?:\'s)? "([^"]+)"')


def headings(page: Path) -> set[str]:
    return set(re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M))


def test_every_named_section_exists():
    """A comment that sends its reader to a section (docs/sweeps.md "Sweeps at scale") names one that is there."""
    named = [(path, page, title) for path in [*READ, ROOT / "pyproject.toml"] for page, title in SECTION.findall(
        path.read_text())]  # fmt: skip
    missing = [
        f"{path.relative_to(ROOT)}: {page} {title!r}"
        for path, page, title in named
        if title not in headings(ROOT / ("README.md" if page == "README" else page))
    ]
    assert named and missing == []
