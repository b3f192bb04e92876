"""MkDocs hook of the docs site (``hooks:`` in mkdocs.yml): the notebooks' pages.

Each notebook of ``notebooks/`` becomes a page (mkdocs-jupyter renders it, executing nothing).
The page shows the copy ``make demo`` executed, with its tables and figures, where
``runs/demo/notebooks/`` holds one (notebooks 01 to 06 after ``make demo``); otherwise the
committed notebook, whose outputs are stripped.
"""

import os
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = Path("runs", "demo", "notebooks")  # where make demo writes them (workbench/demo.py)


def notebook_sources(root: Path, project: Path | None = None) -> dict[str, Path]:
    """``{name: the file shown}`` for each notebook of ``root/notebooks``: its executed copy
    under ``project/runs/demo/notebooks`` when there is one, else the notebook itself."""
    project = root if project is None else project
    sources = {}
    for notebook in sorted((root / "notebooks").glob("*.ipynb")):
        executed = project / EXECUTED / notebook.name
        sources[notebook.name] = executed if executed.is_file() else notebook
    return sources


@event_priority(100)  # before mkdocs-jupyter's on_files, which makes the notebooks pages
def on_files(files, config):
    project = Path(os.environ.get("WORKBENCH_ROOT") or ROOT)  # as make demo resolves --runs
    for name, source in notebook_sources(ROOT, project).items():
        # a File whose src_dir/src_uri is the notebook: mkdocs-jupyter's page wrapper reads the
        # path from those (File.generated's abs_src_path would be lost)
        files.append(File(f"notebooks/{name}", src_dir=str(source.parent.parent),
                          dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls))
    return files
