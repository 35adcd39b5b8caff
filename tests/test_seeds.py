"""Seed mining: real files with every kind of trouble, each dropped with its reason."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scoder.config import SeedsConfig, load_config
from scoder.seeds import SeedSourceError, mine_seeds, run_seeds
from scoder.store import read_jsonl

GOOD = '''import os


def area(width, height):
    """Area of a rectangle."""
    result = width * height
    return result


@staticmethod
def decorated(x):
    y = x + 1
    return y * 2


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)


def tiny():
    return 1
'''

DUPLICATE = '''def area(width, height):
    """Area of a rectangle."""
    # the same code as in good.py, with a comment and other spacing
    result = width*height
    return result
'''

LONG = "def long_one():\n" + "".join(f"    x{i} = {i}\n" for i in range(100)) + "    return x0\n"


@pytest.fixture
def source_dir(tmp_path):
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "good.py").write_text(GOOD)
    (root / "pkg" / "dup.py").write_text(DUPLICATE)
    (root / "broken.py").write_text("def oops(:\n    pass\n")
    (root / "binary.py").write_bytes(b"\x00\x01\x02def f():\n    pass\n")
    (root / "latin1.py").write_bytes(
        "def f():\n    return 'caf\xe9'\n    # more\n".encode("latin-1")
    )
    (root / "huge.py").write_text("x = 1\n" * 300_000)
    (root / "long.py").write_text(LONG)
    (root / "constants.py").write_text("A = 1\nB = 2\n")
    (root / "notes.txt").write_text("def not_python():\n    pass\n    pass\n")
    return root


def mine(root, **kw):
    cfg = SeedsConfig(
        source=str(root), max_seeds=None, min_lines=3, max_lines=40, max_file_bytes=100_000, **kw
    )
    mined = mine_seeds(cfg, random_seed=0)
    return mined.kept, mined.dropped


def test_directory_source_keeps_definitions_and_records_every_drop(source_dir):
    kept, dropped = mine(source_dir)
    names = sorted(s.source.name for s in kept)
    assert names == ["Stack", "area", "decorated"]
    reasons = {(s.source.location, s.drop.reason) for s in dropped}
    assert reasons == {
        ("broken.py", "syntax_error"),
        ("binary.py", "binary"),
        ("latin1.py", "not_utf8"),
        ("huge.py", "too_large"),
        ("long.py", "too_long"),
        ("constants.py", "no_definitions"),
        ("pkg/good.py", "too_short"),  # tiny()
        ("pkg/good.py", "duplicate"),  # area() was first seen in pkg/dup.py (sorted order)
    }
    assert all(s.drop.stage == "seeds" and s.drop.detail for s in dropped)


def test_links_leaving_the_source_fifos_and_dangling_links_are_dropped_never_read(tmp_path):
    """A seed directory is read only inside itself: a link to a Python file elsewhere (a settings
    module with credentials, say) is dropped as outside_source, unread; a FIFO (reading it would
    block) as not_a_file; a dangling link as unreadable. A link within the tree is followed."""
    body = "def secret(x):\n    y = x * 2\n    return y + 1\n"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "settings.py").write_text(body.replace("secret", "settings_key"))
    root = tmp_path / "seeds"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "real.py").write_text(body)
    (root / "escape.py").symlink_to(outside / "settings.py")
    (root / "passwd.py").symlink_to("/etc/passwd")
    (root / "inside.py").symlink_to(root / "pkg" / "real.py")
    (root / "dangling.py").symlink_to(root / "gone.py")
    os.mkfifo(root / "pipe.py")
    kept, dropped = mine(root)
    assert [s.source.location for s in kept] == ["inside.py"]  # pkg/real.py: the same code
    reasons = {s.source.location: s.drop.reason for s in dropped}
    assert reasons == {
        "escape.py": "outside_source",
        "passwd.py": "outside_source",
        "dangling.py": "unreadable",
        "pipe.py": "not_a_file",
        "pkg/real.py": "duplicate",
    }
    assert all(
        "settings_key" not in s.text and not s.text
        for s in dropped
        if s.source.location != "pkg/real.py"
    )


def test_seed_keeps_its_source_span(source_dir):
    kept, _ = mine(source_dir)
    deco = next(s for s in kept if s.source.name == "decorated")
    lines = (source_dir / "pkg" / "good.py").read_text().splitlines()
    assert deco.text == "\n".join(lines[deco.source.line_start - 1 : deco.source.line_end])
    assert deco.text.startswith("@staticmethod")
    assert deco.source.kind == "dir" and deco.source.location == "pkg/good.py"


def test_exclude_patterns(source_dir):
    kept, dropped = mine(source_dir, exclude=["pkg/*"])
    assert kept == []
    assert all(not s.source.location.startswith("pkg/") for s in dropped)


def test_max_seeds_sample_is_reproducible_and_depends_on_the_seed(source_dir):
    for i in range(12):
        (source_dir / f"extra{i}.py").write_text(f"def f{i}(x):\n    y = x + {i}\n    return y\n")
    cfg = SeedsConfig(source=str(source_dir), max_seeds=4, max_file_bytes=100_000)
    first = [s.id for s in mine_seeds(cfg, random_seed=0).kept]
    assert first == [s.id for s in mine_seeds(cfg, random_seed=0).kept]
    assert len(first) == 4
    assert first != [s.id for s in mine_seeds(cfg, random_seed=1).kept]


def test_git_checkout_uses_tracked_files_only(source_dir):
    git = ["git", "-C", str(source_dir), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "pkg/good.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    kept, dropped = mine(source_dir)
    assert {s.source.location for s in kept + dropped} == {"pkg/good.py"}


def test_jsonl_and_parquet_sources(tmp_path):
    rows = [
        {"content": GOOD, "lang": "python"},
        {"content": "def broken(:", "lang": "python"},
        {"content": None, "lang": "python"},
        {"content": DUPLICATE, "lang": "python"},
    ]
    jsonl = tmp_path / "seeds.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "seeds.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        mined = mine_seeds(SeedsConfig(source=str(path), max_seeds=None), random_seed=0)
        kept, dropped = mined.kept, mined.dropped
        assert sorted(s.source.name for s in kept) == ["Stack", "area", "decorated"]
        assert {s.source.row for s in kept} == {0}
        assert Counter(s.drop.reason for s in dropped) == Counter(
            {"syntax_error": 1, "empty": 1, "duplicate": 1, "too_short": 1}
        )
        assert all(s.source.kind == "file" for s in kept + dropped)


def test_whole_rows_as_seeds(tmp_path):
    path = tmp_path / "snippets.jsonl"
    path.write_text(json.dumps({"code": "x = 1\ny = 2\nprint(x + y)\n"}) + "\n")
    kept = mine_seeds(
        SeedsConfig(source=str(path), column="code", unit="whole"), random_seed=0
    ).kept
    assert [s.text for s in kept] == ["x = 1\ny = 2\nprint(x + y)"]


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "def f(): pass"}) + "\n")
    with pytest.raises(SeedSourceError, match=r"no column 'content' \(columns: text\)"):
        mine_seeds(SeedsConfig(source=str(path)), random_seed=0)


def test_a_row_without_the_column_is_dropped_saying_so(tmp_path):
    """Some rows lack the column: those are dropped as missing_column (not silently as empty),
    the rest are mined."""
    path = tmp_path / "rows.jsonl"
    rows = [
        {"content": GOOD},
        {"text": "def f(): pass"},
        ["not", "an", "object"],
        {"content": None},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mined = mine_seeds(SeedsConfig(source=str(path), max_seeds=None), random_seed=0)
    assert mined.kept
    by_row = {s.source.row: (s.drop.reason, s.drop.detail) for s in mined.dropped}
    assert by_row[1] == ("missing_column", "record 2 has no 'content'")
    assert by_row[2][0] == "missing_column" and by_row[3][0] == "empty"


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"content": "def f(): pass"}\n{"content": "x\xff"}\n', r"rows.jsonl:2: not UTF-8"),
        (b'{"content": "def f(): pass"}\n\n{"content": \n', r"rows.jsonl:3: not a valid record"),
    ],
)
def test_a_broken_jsonl_line_is_named_by_its_line_number(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(SeedSourceError, match=message):
        mine_seeds(SeedsConfig(source=str(path)), random_seed=0)


@pytest.mark.parametrize("source", ["/no/such/dir", "notes.txt"])
def test_unusable_sources_are_clear_errors(tmp_path, source):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SeedSourceError):
        mine_seeds(
            SeedsConfig(source=str(tmp_path / source) if source == "notes.txt" else source),
            random_seed=0,
        )


def test_stdlib_default_is_reproducible():
    cfg = SeedsConfig(max_seeds=10)
    a = mine_seeds(cfg, random_seed=0).kept
    b = mine_seeds(cfg, random_seed=0).kept
    assert len(a) == 10 and [s.id for s in a] == [s.id for s in b]
    assert all(
        s.source.kind == "stdlib" and "test" not in s.source.location.split("/")[:-1] for s in a
    )


def test_run_seeds_writes_files_readable_by_datasets(tmp_path, source_dir):
    import datasets

    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"seeds.source={source_dir}",
            "seeds.max_file_bytes=100000",
        ],
    )
    run, mined = run_seeds(cfg)
    kept, dropped = mined.kept, mined.dropped
    seeds_file = run.stage_dir("seeds") / "kept.jsonl"
    assert [s.id for s in read_jsonl(seeds_file, type(kept[0]))] == [s.id for s in kept]
    for name, expected in (("kept.jsonl", len(kept)), ("dropped.jsonl", len(dropped))):
        ds = datasets.load_dataset(
            "json", data_files=str(run.stage_dir("seeds") / name), split="train"
        )
        assert ds.num_rows == expected
    stage = run.load_manifest()["stages"]["seeds"]
    assert stage["status"] == "done"
    assert stage["counts"]["kept"] == len(kept)
    assert sum(stage["counts"]["dropped_by_reason"].values()) == len(dropped)


def test_hf_dataset_source_streams_rows(tmp_path):
    """`hf:NAME` goes through datasets.load_dataset (here a local dataset folder, as offline)."""
    folder = tmp_path / "my-dataset"
    (folder / "data").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([{"content": GOOD}, {"content": DUPLICATE}]),
        folder / "data" / "train.parquet",
    )
    mined = mine_seeds(SeedsConfig(source=f"hf:{folder}", max_seeds=None), random_seed=0)
    kept, dropped = mined.kept, mined.dropped
    assert sorted(s.source.name for s in kept) == ["Stack", "area", "decorated"]
    assert all(s.source.kind == "hf" and s.source.location == str(folder) for s in kept)
    assert Counter(s.drop.reason for s in dropped) == Counter({"duplicate": 1, "too_short": 1})
    with pytest.raises(SeedSourceError, match="no column 'code'"):
        mine_seeds(SeedsConfig(source=f"hf:{folder}", column="code"), random_seed=0)


def test_mining_more_seeds_starts_with_the_same_ones(source_dir):
    """The loop's seed pool grows when a config asks for more rounds or final samples: the
    seeds already handed to rounds must stay what they were."""
    for i in range(12):
        (source_dir / f"extra{i}.py").write_text(f"def f{i}(x):\n    y = x + {i}\n    return y\n")
    cfg = SeedsConfig(source=str(source_dir), max_file_bytes=100_000)
    few = mine_seeds(cfg, random_seed=3, max_seeds=4).kept
    more = mine_seeds(cfg, random_seed=3, max_seeds=9).kept
    assert len(few) == 4 and len(more) == 9
    assert [s.id for s in more[:4]] == [s.id for s in few]
