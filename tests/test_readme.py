"""Every command the README and the docs pages show in a ```bash block runs, exactly as written.

A block preceded by ``<!-- not run by the tests: REASON -->`` (it needs the internet, a GPU, or
minutes; it serves until stopped; it is a synopsis) is skipped, and must say why. A block
preceded by ``<!-- run by the tests, which expect exit status N -->`` must end with status N and
one ``error:`` line. Every other block runs in a scratch project folder made here, as a user
types it there: ``notebooks/`` (a copy), ``photos/`` (photo-like JPEGs in nested class folders),
``caffe_root/`` with ``train_val.txt`` and ``synset_words.txt``, and
``mobilenet_v2.weights.h5`` (random weights standing in for the downloaded ones), with
``workbench`` and ``papermill`` of this environment on ``PATH``. The blocks run in the order the
README shows them, then the docs pages' in the order of mkdocs.yml's nav, each command in its
own shell, all in the one project, so later blocks use what earlier ones wrote. A skipped block
that later blocks build on runs with the arguments in :data:`STAND_INS` appended (its comment
says so). A page that includes part of the README (``--8<-- "README.md:NAME"``) shows the
README's blocks, which run once, as the README's.
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_data

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the environment's workbench and papermill
COMMAND_SECONDS = 600  # a limit against a hang, far above what a command takes

SKIP = re.compile(r"<!--\s*not run by the tests:\s*(?P<reason>.*?)\s*-->")
EXPECT = re.compile(r"<!--\s*run by the tests, which expect exit status (?P<status>\d+)\s*-->")

# Skipped blocks that later ones build on: (the start of the command, what is appended). The
# photo workflow's fine-tuning needs ImageNet weights and minutes; offline and tiny, it leaves
# the run directory that notebooks 04, 05 and 06 are then pointed at.
STAND_INS = {
    "papermill notebooks/03_fine_tune.ipynb runs/photos/03.ipynb": (
        "-p weights mobilenet_v2.weights.h5 -p recipes two_stage -p seeds 0 -p epochs 2 "
        "-p image_size 64 -p batch_size 8"),
}


def documents() -> list[Path]:
    """README.md, then each Markdown page of mkdocs.yml's nav, in its order."""
    nav = re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w./-]+\.md)\s*$",
                     (REPO / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.MULTILINE)
    return [README, *(REPO / "docs" / page for page in nav)]


@dataclasses.dataclass
class Block:
    name: str           # the document, the section's heading and the block's number in it
    line: int           # of the opening fence, 1-based
    commands: list      # one string per command, continuation lines joined
    skip: str | None    # the reason it is not run
    status: int = 0     # the exit status the README documents


def commands_of(lines: list[str]) -> list[str]:
    """Each command of a block: continuation lines joined, comment lines left out."""
    commands, current = [], ""
    for line in lines:
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.strip() if current else line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
        else:
            commands.append(current.strip())
            current = ""
    assert not current, f"a command ends with a line continuation: {current!r}"
    return commands


def readme_blocks(text: str, document: str = "README.md") -> list[Block]:
    """The ```bash blocks of ``text`` (the Markdown of ``document``), each with the HTML
    comment just above it read; ``document`` prefixes the names of the blocks but README's."""
    lines, blocks, heading, counts = text.splitlines(), [], "top", {}
    prefix = "" if document == "README.md" else f"{document.removesuffix('.md')}/"
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        if not line.startswith("```"):
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        assert line.strip() not in ("```sh", "```shell", "```console", "```zsh"), \
            f"{document} line {index + 1}: commands go in ```bash blocks, which the tests run"
        if line.strip() != "```bash":  # another fenced block: its '#' lines are no headings
            index = end + 1
            continue
        above = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        skip = expect = None
        if above.startswith("<!--"):
            skip, expect = SKIP.fullmatch(above), EXPECT.fullmatch(above)
            assert skip or expect, (f"{document} line {index}: a comment above a bash block must "
                                    f"be '<!-- not run by the tests: REASON -->' or '<!-- run by "
                                    f"the tests, which expect exit status N -->', found: {above}")
        counts[heading] = counts.get(heading, 0) + 1
        blocks.append(Block(f"{prefix}{heading}-{counts[heading]}", index + 1, commands_of(
            lines[index + 1:end]), skip["reason"] if skip else None,
            int(expect["status"]) if expect else 0))
        index = end + 1
    return blocks


DOCUMENTS = documents()
BLOCKS = [block for path in DOCUMENTS
          for block in readme_blocks(path.read_text(encoding="utf-8"), path.name)]
RUN = [block for block in BLOCKS if block.skip is None]


def stand_in(block: Block) -> list[str] | None:
    """The commands run in place of a skipped block, or None."""
    for start, extra in STAND_INS.items():
        if block.commands and block.commands[0].startswith(start):
            assert len(block.commands) == 1, f"{block.name}: a stand-in replaces one command"
            return [f"{block.commands[0]} {extra}"]
    return None


def test_every_skipped_block_says_why_and_the_rest_run():
    assert len(DOCUMENTS) >= 10, "mkdocs.yml's pages were not found"
    assert len(BLOCKS) >= 8, "the bash blocks of the README and the docs were not found"
    for block in BLOCKS:
        assert block.commands, f"{block.name} (line {block.line}) holds no command"
        if block.skip is not None:
            assert len(block.skip.split()) >= 3, \
                f"{block.name} (line {block.line}) is skipped without a reason: {block.skip!r}"
    # what a user does first with their own photos, and the data commands, do run
    ran = [command for block in RUN for command in block.commands]
    assert any(command.startswith("papermill notebooks/01_prepare_data.ipynb") for command in ran)
    assert any(command.startswith("papermill notebooks/06_classify.ipynb") for command in ran)
    assert any(command.startswith("workbench split caffe_root/") for command in ran)
    for start in STAND_INS:  # a stand-in whose block changed or went away is caught here
        assert sum(block.commands[0].startswith(start) for block in BLOCKS if block.skip) == 1, \
            f"STAND_INS names no skipped block of the README or the docs: {start!r}"
    names = [block.name for block in BLOCKS]
    assert len(names) == len(set(names)), "two blocks have one name"


def test_the_block_reader_joins_continuations_and_reads_the_comments():
    text = ("## A section\n\n<!-- not run by the tests: needs the internet -->\n```bash\n"
            "make demo   # a comment\n```\n\n```bash\n# a comment line\nworkbench split a \\\n"
            "    --out b\nworkbench split c\n```\n### Next one\n"
            "<!-- run by the tests, which expect exit status 2 -->\n\n```bash\nfalse\n```\n"
            "```python\n# not a heading\n```\n```bash\ntrue\n```\n")
    blocks = readme_blocks(text)
    assert [(b.name, b.line, b.skip, b.status) for b in blocks] == [
        ("a-section-1", 4, "needs the internet", 0), ("a-section-2", 8, None, 0),
        ("next-one-1", 17, None, 2), ("next-one-2", 23, None, 0)]
    assert blocks[0].commands == ["make demo   # a comment"]
    assert blocks[1].commands == ["workbench split a --out b", "workbench split c"]
    with pytest.raises(AssertionError, match="a comment above a bash block must be"):
        readme_blocks("<!-- not run: no reason given -->\n```bash\nls\n```\n")
    paged = readme_blocks("# Deploy\n## The web service\n```bash\nls\n```\n", "deploy.md")
    assert [block.name for block in paged] == ["deploy/the-web-service-1"]
    with pytest.raises(AssertionError, match="training.md line 2: commands go in"):
        readme_blocks("# Training\n```sh\nls\n```\n", "training.md")


def test_the_documents_are_the_readme_then_the_pages_in_nav_order():
    names = [path.relative_to(REPO).as_posix() for path in DOCUMENTS]
    assert names[:3] == ["README.md", "docs/index.md", "docs/getting-started.md"]
    assert "docs/your-photos.md" in names and all(name.endswith(".md") for name in names)
    assert all(path.is_file() for path in DOCUMENTS)


# --- the scratch project folder ----------------------------------------------------------------

def write_photos(root: Path, *, per_class: int = 30) -> None:
    """JPEGs of several sizes and orientations in nested class folders: 30 per class (the docs'
    ``--min-per-class 30``), each a few hundred pixels (size is not the point here;
    tests/notebooks/photo_folder.py writes megapixel photos)."""
    sys.path.insert(0, str(Path(__file__).parent / "notebooks"))
    try:
        import photo_folder
    finally:
        sys.path.pop(0)
    sizes = [(320, 240), (240, 320), (160, 120), (400, 300), (200, 200)]
    folders = ["", "2023/holiday", "phone/DCIM"]
    for number, (label, colour) in enumerate(photo_folder.CLASSES.items()):
        for index in range(per_class):
            folder = root / label / folders[index % len(folders)]
            folder.mkdir(parents=True, exist_ok=True)
            image = photo_folder.photo(1000 * number + index, colour, sizes[index % len(sizes)])
            (folder / f"IMG_{index:04d}.JPG").write_bytes(
                photo_folder.jpeg(image, orientation=6 if index % 7 == 3 else None))


def write_caffe_list(project: Path) -> None:
    """``caffe_root/`` of digit PNGs, listed in ``train_val.txt``, named in ``synset_words.txt``."""
    tiny_data.write_digits(project / "caffe_root", per_class=10)
    paths = sorted((project / "caffe_root").rglob("*.png"))
    (project / "train_val.txt").write_text("".join(
        f"{path.relative_to(project / 'caffe_root').as_posix()} {path.parent.name}\n"
        for path in paths))
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (project / "synset_words.txt").write_text("".join(f"n{i:08d} {name}\n"
                                                      for i, name in enumerate(names)))


def write_weights(path: Path) -> None:
    """What the README's one-liner saves, with random weights (no internet here)."""
    import keras

    keras.applications.MobileNetV2(include_top=False, weights=None,
                                   pooling="avg").save_weights(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("readme_project")
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    write_photos(project / "photos")
    write_caffe_list(project)
    write_weights(project / "mobilenet_v2.weights.h5")
    env = {key: value for key, value in os.environ.items()  # nothing a user would not have
           if key not in ("WORKBENCH_ROOT", "WORKBENCH_PROGRESS", "WORKBENCH_CACHE_DIR")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {"path": project, "env": env, "done": {}}


def run_command(project, command: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["bash", "-c", command], cwd=project["path"], env=project["env"],
                              capture_output=True, text=True, timeout=COMMAND_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {COMMAND_SECONDS} s: {command}")


def run_block(project, block: Block) -> None:
    commands = stand_in(block) if block.skip else block.commands
    for command in commands or []:
        result = run_command(project, command)
        said = f"$ {command}\nexit status {result.returncode}\n{result.stderr[-3000:]}"
        assert result.returncode == block.status, said
        if block.status:  # a documented error: one line naming it, no traceback
            errors = result.stderr.strip().splitlines()
            assert errors and errors[-1].startswith("error: ") and "Traceback" not in \
                result.stderr, said


def run_through(project, target: Block) -> None:
    """Runs the blocks in order up to ``target`` (each once; a failure is kept)."""
    for block in BLOCKS[: BLOCKS.index(target) + 1]:
        if block.name not in project["done"]:
            try:
                run_block(project, block)
                project["done"][block.name] = None
            except BaseException as error:  # later blocks say which earlier one failed
                project["done"][block.name] = f"{block.name} (line {block.line}): {error}"
                raise
        elif project["done"][block.name] is not None:
            pytest.fail(f"an earlier block failed, {project['done'][block.name]}")


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[block.name for block in RUN])
def test_readme_block_runs_as_written(project, block):
    run_through(project, block)
    if block.commands[0].startswith("papermill notebooks/06_classify.ipynb"):
        assert (project["path"] / "runs/photos/06.ipynb").is_file()
        assert (project["path"] / "runs/photos/splits/cache").is_dir()  # where the README says
    if block.commands[0].startswith("workbench split caffe_root/"):
        labels = (project["path"] / "splits_caffe" / "labels.txt").read_text().split("\n")
        assert labels[0] == "n00000000 zero"
