"""Run every ```python block of every docs/*.md file, so worked examples stay true.

Blocks of one file run in order in one shared namespace (a later block may
use names from an earlier one).  Every block must assert something: a
worked example that asserts nothing cannot go stale without notice.
Tracebacks point at the line in the .md file.
"""
import pathlib
import re

import pytest

DOCS_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs"
DOCS = sorted(DOCS_DIR.glob("*.md"))
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    """[(first line number of the code, code)] for each ```python block."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_block_extraction():
    text = "intro\n```python\nx = 1\nassert x == 1\n```\ntext\n```bash\nls\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(3, "x = 1\nassert x == 1\n"), (11, "y = 2\n")]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_examples(path):
    blocks = python_blocks(path.read_text())
    namespace = {"__name__": f"docs_{path.stem}"}
    for line, code in blocks:
        assert re.search(r"^\s*assert\b", code, re.M), f"{path.name}:{line}: block has no assert"
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
