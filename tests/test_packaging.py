"""pyproject.toml and environment.yml list the same packages; the two commands are wired up."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["test"])


def conda_pip_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    items = []
    for line in lines[start + 1:]:
        match = re.match(r"^\s{6}- (.+?)\s*$", line)
        if match:
            items.append(match.group(1))
        elif line.strip() and not line.strip().startswith("#"):
            break
    return {item for item in items if item != "-e ."}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    conda, pip = conda_pip_requirements(), pyproject_requirements()
    assert conda == pip, f"only in environment.yml: {conda - pip}; only in pyproject: {pip - conda}"
    assert "-e ." in (ROOT / "environment.yml").read_text()


def test_ci_runs_what_the_readme_tells_a_user():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert readme.index("make demo") < readme.index("make test") < readme.index("## The workflow")
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "lab:"):
        assert target in makefile
