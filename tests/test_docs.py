"""The docs site (mkdocs.yml, docs/): every family has a page in the nav, in the family-page
template; every `>>>` example in docs/*.md runs as a doctest; the strict MkDocs build passes
(broken links, missing pages or images, bad references and docstrings that do not match their
signatures fail it). The loss table in docs/index.md is checked with the README's by
tests/test_layout.py (tools/sync_families.py --check)."""
import doctest
import glob
import importlib.util
import os
import re
import subprocess
import sys
import time

import pytest

from lossext._core.families import FAMILIES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
MKDOCS_YML = os.path.join(REPO, "mkdocs.yml")
pytestmark = pytest.mark.skipif(not os.path.isfile(MKDOCS_YML), reason="runs from the source tree only (no mkdocs.yml)")

# The sections of a family page, in order (docs/design.md, "The family page").
FAMILY_SECTIONS = ["Formulas", "Defaults and where they come from", "Gradients the kernels implement",
                   "Numerical notes", "Compared with the peers", "Usage", "C++", "API"]
# ```pycon or ```python blocks that hold `>>>` prompts (the fence's own lines are not examples)
FENCE = re.compile(r"^```(pycon|python)[^\n]*\n(.*?)^```", re.M | re.S)


def nav_pages():
    """Every page of the mkdocs.yml nav, with the title path that leads to it."""
    yaml = pytest.importorskip("yaml")
    with open(MKDOCS_YML) as f:
        nav = yaml.safe_load(f)["nav"]
    out = {}

    def walk(items, path):
        for item in items:
            if isinstance(item, str):
                out[item] = path
                continue
            for title, value in item.items():
                if isinstance(value, list):
                    walk(value, path + [title])
                else:
                    out[value] = path + [title]
    walk(nav, [])
    return out


def test_every_family_has_a_page_in_the_nav():
    pages = nav_pages()
    for fam in FAMILIES:
        page = f"{fam}.md"
        assert os.path.isfile(os.path.join(DOCS, page)), f"family {fam!r} has no docs/{page}"
        assert page in pages and pages[page][:1] == ["Loss families"], \
            f"docs/{page} is not under 'Loss families' in the nav of mkdocs.yml"
    for page in pages:
        assert os.path.isfile(os.path.join(DOCS, page)), f"mkdocs.yml's nav names a missing page docs/{page}"
    on_disk = {os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)}
    assert on_disk <= set(pages), f"pages not in the nav of mkdocs.yml: {sorted(on_disk - set(pages))}"


@pytest.mark.parametrize("fam", FAMILIES)
def test_family_page_follows_the_template(fam):
    text = open(os.path.join(DOCS, f"{fam}.md")).read()
    headings = re.findall(r"^## (.+?)\s*$", text, re.M)
    assert [h for h in headings if h in FAMILY_SECTIONS] == FAMILY_SECTIONS, \
        f"docs/{fam}.md: sections {headings}, expected {FAMILY_SECTIONS} in that order"
    assert f"::: lossext.{fam}.functional" in text, f"docs/{fam}.md has no API reference of lossext.{fam}.functional"
    blocks = [m.group(2) for m in FENCE.finditer(text) if ">>>" in m.group(2)]
    assert blocks, f"docs/{fam}.md has no doctested example (a ```pycon block of >>> lines)"


def page_examples(path):
    """The `>>>` examples of a page's fenced pycon/python blocks, as one doctest (shared globals,
    so an example may use the names an earlier block of the page defined)."""
    text = open(path).read()
    parser = doctest.DocTestParser()
    examples = []
    for m in FENCE.finditer(text):
        if ">>>" not in m.group(2):
            continue
        lineno = text[:m.start(2)].count("\n")
        for ex in parser.get_examples(m.group(2)):
            ex.lineno += lineno
            examples.append(ex)
    name = os.path.relpath(path, REPO)
    return doctest.DocTest(examples, {"__name__": "__docs__"}, name, path, 0, None)


PAGES = [p for p in sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
         if any(">>>" in m.group(2) for m in FENCE.finditer(open(p).read()))]


@pytest.mark.parametrize("path", PAGES, ids=lambda p: os.path.relpath(p, DOCS))
def test_page_examples(path):
    test = page_examples(path)
    out = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)
    assert result.attempted == len(test.examples)


def _have_mkdocs():
    return all(importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "mkdocstrings_handlers.python"))


@pytest.mark.skipif(not _have_mkdocs(), reason="mkdocs, mkdocs-material or mkdocstrings[python] is not installed "
                    "(pip install lossext[docs], or the requirements-dev.txt that CI installs)")
@pytest.mark.skipif(os.environ.get("LOSSEXT_SANITIZED") == "1",
                    reason="the site build checks no kernel; make test runs it against the normal build")
def test_strict_build(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                          str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - start
    assert out.returncode == 0, f"mkdocs build --strict failed ({took:.0f} s):\n{out.stdout}\n{out.stderr}"
    for fam in FAMILIES:
        assert os.path.isfile(tmp_path / "site" / fam / "index.html"), fam
