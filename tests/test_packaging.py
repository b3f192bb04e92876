"""pyproject.toml and environment.yml list the same packages; the two commands are wired up."""

import os
import re
import subprocess
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


def make_dry_run(target: str, venv: Path, *variables: str) -> list[str]:
    """The commands ``make TARGET`` runs (``make -n``), with the environment in ``venv``."""
    result = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), target,
                             f"VENV={venv}", *variables], capture_output=True, text=True,
                            check=True)
    return [line.strip() for line in result.stdout.splitlines()]


def readme_two_commands() -> list[str]:
    """The commands of the README's "Two commands" block, comments left out."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Two commands"):readme.index("## The workflow")]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_the_command_the_readme_tells_a_user(tmp_path):
    assert readme_two_commands() == ["make demo", "make test"]
    fake = tmp_path / "bin" / "make"  # records how CI calls make, and where
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$PWD $*" >> {tmp_path / "calls"}\n')
    fake.chmod(0o755)
    subprocess.run([str(ROOT / ".ci" / "run")], check=True,
                   env={**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"})
    assert (tmp_path / "calls").read_text().splitlines() == [f"{ROOT} test"]


def test_make_demo_runs_the_workflow_and_make_test_the_whole_suite_in_parallel(tmp_path):
    venv = tmp_path / "venv"
    demo = make_dry_run("demo", venv)
    assert demo[-1] == f"{venv}/bin/python -m workbench.demo --data data/sample --runs runs/demo"
    assert any(line.endswith('-e ".[test]"') for line in demo)  # installs first
    test = make_dry_run("test", venv)
    installs = [i for i, line in enumerate(test) if line.endswith('-e ".[test,docs]"')]
    lint = test.index(f"{venv}/bin/lint-imports")
    pytest_line = test[-1].split()
    assert installs and installs[0] < lint == len(test) - 2  # install, lint, then the suite
    assert pytest_line[:3] == [f"{venv}/bin/python", "-m", "pytest"]
    assert pytest_line[3:] == ["-n", "auto", "--durations=15"]  # every core, the 15 slowest
    assert make_dry_run("test", venv, "TEST_WORKERS=0")[-1].endswith("pytest -n 0 --durations=15")
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]
    assert "--dist loadscope" in options["addopts"]  # a module's fixtures built once
    assert any(marker.startswith("slow:") for marker in options["markers"])
    lab = make_dry_run("lab", venv)
    assert lab[-1].startswith(f"{venv}/bin/jupyter lab --ServerApp.root_dir=.")


def conda_gpu_extras() -> dict[str, set[str]]:
    """The commented-out GPU lines of environment.yml: ``#- requirement  # extra: name``."""
    extras: dict[str, set[str]] = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        match = re.match(r"^\s{6}#- (.+?)\s+# extra: (\S+)\s*$", line)
        if match:
            extras.setdefault(match.group(2), set()).add(match.group(1))
    return extras


def test_gpu_extras_are_the_same_in_both_files():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    gpu = {name: set(requirements) for name, requirements in optional.items()
           if name.startswith("gpu-")}
    assert set(gpu) == {"gpu-tf", "gpu-jax"}
    assert any(r.startswith("tensorflow[and-cuda]") for r in gpu["gpu-tf"])
    assert any(r.startswith("jax[cuda") for r in gpu["gpu-jax"])
    assert {name: lines for name, lines in conda_gpu_extras().items()
            if name.startswith("gpu-")} == gpu


def test_the_bench_extra_is_the_same_in_both_files_and_needed_by_nothing_else():
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(optional["bench"]) == {"torch", "timm"}
    assert conda_gpu_extras()["bench"] == set(optional["bench"])  # commented out: optional
    assert not {"torch", "timm"} & pyproject_requirements()  # make demo/test install these


def test_uncommenting_a_gpu_extra_gives_a_pip_line_of_the_environment():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    uncommented = [line.replace("#- ", "- ", 1) if "# extra: gpu-jax" in line else line
                   for line in lines]
    start = next(i for i, line in enumerate(uncommented) if line.strip() == "- pip:")
    pip_items = [re.match(r"^\s{6}- (.+?)(\s+#.*)?$", line) for line in uncommented[start + 1:]]
    assert "jax[cuda12]" in {match.group(1) for match in pip_items if match}


def test_make_installs_the_extras_it_is_given(tmp_path):
    def install_lines(*variables):
        result = subprocess.run(["make", "-n", "-C", str(ROOT), "install",
                                 f"VENV={tmp_path / 'venv'}", *variables],
                                capture_output=True, text=True, check=True)
        return [line for line in result.stdout.splitlines() if "pip install --quiet -e" in line]

    assert install_lines()[0].endswith('-e ".[test]"')
    assert install_lines("EXTRAS=gpu-jax")[0].endswith('-e ".[test,gpu-jax]"')
    assert install_lines("EXTRAS=gpu-jax,gpu-tf")[0].endswith('-e ".[test,gpu-jax,gpu-tf]"')
    assert "gpu-wheels:" in (ROOT / "Makefile").read_text()
    assert "/build/" in (ROOT / ".gitignore").read_text().splitlines()  # gpu-wheels lands there
