"""The documentation site builds, and the README is its front door.

``make docs`` builds ``docs/`` with MkDocs Material as ``mkdocs.yml`` says; ``make test`` runs
this file, whose slow test builds the whole site with ``--strict`` (any warning fails it: a
broken link or anchor, a missing snippet, a docstring mkdocstrings cannot read) into a temporary
folder. The quick tests check that the pages named in the nav exist, that the README stays short
and links to every page, and that the pages state what the code does (the import layers, the
command's verbs, the reasons a file is rejected). ``tests/test_readme.py`` runs the pages' bash
blocks.
"""

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_LINES = 300
BUILD_SECONDS = 1200  # a limit against a hang, far above what a build takes
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<rest>[^"]*))?"\s*$', re.MULTILINE)


def nav_entries(nav) -> list[str]:
    """The files of mkdocs.yml's nav, in order."""
    entries = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        entries += nav_entries(value) if isinstance(value, list) else [value]
    return entries


CONFIG = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
NAV = nav_entries(CONFIG["nav"])
PAGES = [entry for entry in NAV if entry.endswith(".md")]
NOTEBOOK_PAGES = [entry for entry in NAV if entry.endswith(".ipynb")]


def test_every_page_of_the_nav_exists_and_every_page_is_in_it():
    assert len(PAGES) >= 12 and PAGES[0] == "index.md"
    for page in PAGES:
        assert (DOCS / page).is_file(), f"mkdocs.yml names docs/{page}, which is missing"
    for notebook in NOTEBOOK_PAGES:  # docs/hooks.py serves them from notebooks/
        assert notebook.startswith("notebooks/") and (REPO / notebook).is_file(), notebook
    on_disk = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert set(PAGES) == on_disk, f"pages not in the nav: {on_disk - set(PAGES)}"
    assert set(NOTEBOOK_PAGES) == {f"notebooks/{path.name}"
                                   for path in (REPO / "notebooks").glob("*.ipynb")}


def markdown_links(text: str) -> list[str]:
    """The targets of ``[text](target)`` links and images, without their ``#anchor``."""
    return [match.group(1) for match in re.finditer(r"\]\(([^)#\s]*)(?:#[^)\s]*)?\)", text)]


def test_the_readme_is_a_short_front_door_that_links_every_page():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, \
        f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: the rest goes to docs/"
    for section in ("## Two commands", "## Your own photos", "## The workflow",
                    "## The `workbench` command", "## Documentation"):
        assert section in lines, f"the README lost its section {section!r}"
    links = markdown_links(text)
    for link in links:
        if not link.startswith(("http://", "https://")):
            assert (REPO / link).exists(), f"README.md links to {link}, which is missing"
    missing = {f"docs/{page}" for page in PAGES} - set(links)
    assert not missing, f"README.md links to no {sorted(missing)}"


def test_nothing_points_outside_the_repository():
    for path in [README, REPO / "mkdocs.yml", REPO / "pyproject.toml", *DOCS.rglob("*.md")]:
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text and "DESIGN.md" not in text, path
        if path.parent == DOCS:
            for link in markdown_links(text):
                assert not link.startswith("../"), f"{path.name} links out of docs/: {link}"


def test_every_snippet_names_a_file_and_section_that_exist():
    included = 0
    for page in PAGES:
        for match in SNIPPET.finditer((DOCS / page).read_text(encoding="utf-8")):
            included += 1
            source = REPO / match["path"]
            assert source.is_file(), f"docs/{page} includes {match['path']}, which is missing"
            section = match["rest"] or ""
            if section and not section[0].isdigit():  # a named section, not a line range
                text = source.read_text(encoding="utf-8")
                for end in ("start", "end"):
                    assert f"--8<-- [{end}:{section}]" in text, \
                        f"docs/{page} includes the section {section!r} of {match['path']}, " \
                        f"which has no {end} marker"
    assert included >= 8
    # every measured table of benchmarks/results is on the site, none copied by hand
    benchmarks = "".join((DOCS / page).read_text(encoding="utf-8") for page in PAGES)
    for result in sorted((REPO / "benchmarks" / "results").glob("*.md")):
        assert f'--8<-- "benchmarks/results/{result.name}' in benchmarks, \
            f"no page includes benchmarks/results/{result.name}"


def test_the_architecture_page_states_the_import_contract():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    layers = next(contract["layers"] for contract in contracts if contract["type"] == "layers")
    expected = [[name.strip().removeprefix("workbench.") for name in layer.split("|")]
                for layer in layers]
    rows = re.findall(r"^\| \d+ \| (.+) \|$", (DOCS / "architecture.md").read_text(),
                      flags=re.MULTILINE)
    assert [re.findall(r"`([\w.]+)`", row) for row in rows] == expected, \
        "docs/architecture.md's layers table (and its layout) must state the layers of the " \
        "import-linter contract in pyproject.toml"
    leaf = next(contract for contract in contracts if contract["name"].startswith("plots is"))
    helpers = {name for layer in expected for name in layer if name.startswith("_")}
    assert {f"workbench.{name}" for name in helpers - {"_checks"}} == \
        set(leaf["forbidden_modules"]), "plots may import every helper but _checks"


def test_the_readme_lists_every_verb_of_the_command():
    from workbench.cli import VERBS

    text = README.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `workbench ([a-z-]+)[ `]", text, flags=re.MULTILINE))
    assert listed == set(VERBS), f"missing: {set(VERBS) - listed}; gone: {listed - set(VERBS)}"


def test_every_reason_a_file_is_rejected_is_documented():
    from workbench.data.scan import REASONS

    text = (DOCS / "your-photos.md").read_text(encoding="utf-8")
    assert [reason for reason in REASONS if f"`{reason}`" not in text] == []


def test_the_docs_extra_is_the_same_in_both_files():
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    commented = {match.group(1) for match in re.finditer(
        r"^\s{6}#- (.+?)\s+# extra: docs\s*$", (REPO / "environment.yml").read_text(),
        flags=re.MULTILINE)}
    assert commented == set(optional["docs"])
    assert {"mkdocs", "mkdocs-material", "mkdocs-jupyter"} <= {
        re.split(r"[\[<>=]", requirement)[0] for requirement in optional["docs"]}
    assert "docs:" in (REPO / "Makefile").read_text()


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebook_pages_show_the_copies_make_demo_executed(tmp_path):
    root, project = tmp_path / "repo", tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (project / "runs" / "demo" / "notebooks").mkdir(parents=True)
    for name in ("01_prepare_data.ipynb", "07_batch_size_study.ipynb"):
        (root / "notebooks" / name).write_text("{}")
    (project / "runs" / "demo" / "notebooks" / "01_prepare_data.ipynb").write_text("{}")
    (project / "runs" / "demo" / "notebooks" / "09_not_a_notebook_of_ours.ipynb").write_text("{}")
    assert load_hooks().notebook_sources(root, project) == {
        "01_prepare_data.ipynb": project / "runs" / "demo" / "notebooks" / "01_prepare_data.ipynb",
        "07_batch_size_study.ipynb": root / "notebooks" / "07_batch_size_study.ipynb"}
    assert load_hooks().notebook_sources(root, tmp_path / "no_demo") == {
        name: root / "notebooks" / name
        for name in ("01_prepare_data.ipynb", "07_batch_size_study.ipynb")}


def notebook_title(path: Path) -> str:
    import json

    first = json.loads(path.read_text(encoding="utf-8"))["cells"][0]
    return "".join(first["source"]).splitlines()[0].lstrip("# ").strip()


@pytest.mark.slow
def test_the_site_builds_without_a_warning(tmp_path):
    site = tmp_path / "site"
    env = {key: value for key, value in os.environ.items() if key != "WORKBENCH_ROOT"}
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's notice about its successor, not ours
    try:
        result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                                 "--site-dir", str(site)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=BUILD_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mkdocs build still running after {BUILD_SECONDS} s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    for page in PAGES:
        built = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.is_file(), f"{page} was not built"
    for notebook in NOTEBOOK_PAGES:
        html = (site / notebook[:-len(".ipynb")] / "index.html").read_text(encoding="utf-8")
        assert notebook_title(REPO / notebook).split(":")[0] in html, notebook
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "workbench.training.train.finetune" in api and "lr_mult_rules" in api
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "8&lt;" not in benchmarks and "warm p50" in benchmarks  # included, not left as is
    photos = (site / "your-photos" / "index.html").read_text(encoding="utf-8")
    assert "runs/photos/01.ipynb" in photos  # the README's commands, included
