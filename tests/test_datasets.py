"""Dataset adapters on small hand-made fixtures in each source format.

The fixtures under tests/fixtures/datasets are invented rows in the exact
format of each public dataset. They are stored uncompressed so they read well
in review, and `source_dir` gzips them into a temporary folder with the file
names the adapters expect.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from recsys.cli import main
from recsys.datasets.io import load_prepared
from recsys.datasets.registry import DATASETS, prepare
from recsys.datasets.schema import CASES_SCHEMA, EVENTS_SCHEMA, ITEMS_SCHEMA
from recsys.errors import ConfigError, DataFormatError, NotFoundError
from recsys.events import validate_event

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def source_dir(tmp_path: Path, name: str) -> Path:
    """Gzip every file of fixture folder `name` into `tmp_path/name`."""
    target = tmp_path / name
    target.mkdir()
    for path in sorted((FIXTURES / name).iterdir()):
        with (
            path.open("rb") as raw,
            gzip.open(target / (path.name + ".gz"), "wb") as gz,
        ):
            shutil.copyfileobj(raw, gz)
    return target


def write_gz(path: Path, text: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)


def rows(table: pa.Table | None) -> list[dict]:
    assert table is not None
    return table.to_pylist()


def events_of(table: pa.Table | None, session_id: str) -> list[tuple]:
    return [
        (r["event_type"], r["item_id"], r["ts"])
        for r in rows(table)
        if r["session_id"] == session_id
    ]


def check_layout(out: Path) -> None:
    """Check schema, sort order and event validity of a prepared folder."""
    dataset = load_prepared(out)
    for table in (dataset.events, dataset.test_events):
        if table is None:
            continue
        assert table.schema.equals(EVENTS_SCHEMA)
        keys = [(r["session_id"], r["ts"]) for r in table.to_pylist()]
        assert keys == sorted(keys)
        for row in table.to_pylist():
            validate_event(row)
    if dataset.cases is not None:
        assert dataset.cases.schema.equals(CASES_SCHEMA)
    if dataset.items is not None:
        assert dataset.items.schema.equals(ITEMS_SCHEMA)


def test_srgnn_benchmark_fixture(tmp_path):
    out = tmp_path / "out"
    manifest = prepare("diginetica", source_dir(tmp_path, "srgnn"), out)
    check_layout(out)
    dataset = load_prepared(out)

    assert manifest["synthetic_ts"] is True
    assert manifest["counts"]["events"]["sessions"] == 4
    assert manifest["counts"]["events"]["events"] == 10
    assert manifest["counts"]["test_events"]["events"] == 5
    assert manifest["counts"]["test_cases"] == 3
    assert [s["read"] for s in manifest["sources"]] == [4, 2, 3]
    assert rows(dataset.cases) == [
        {"case_id": 0, "session_id": "test-0", "prefix": ["1", "3"], "label": "4"},
        {"case_id": 1, "session_id": "test-0", "prefix": ["1"], "label": "3"},
        {"case_id": 2, "session_id": "test-1", "prefix": ["5"], "label": "6"},
    ]
    # Repeats are kept, in file order, one synthetic second apart.
    session = events_of(dataset.events, "2")
    assert [item for _, item, _ in session] == ["2", "2", "6"]
    assert [ts - session[0][2] for _, _, ts in session] == [0, 1000, 2000]


def test_benchmark_ts_follow_file_order(tmp_path):
    out = tmp_path / "out"
    prepare("yoochoose", source_dir(tmp_path, "srgnn"), out)
    dataset = load_prepared(out)
    first_ts = {}
    for table in (dataset.events, dataset.test_events):
        for row in rows(table):
            first_ts.setdefault(row["session_id"], row["ts"])
    ordered = sorted(first_ts, key=first_ts.get)
    assert ordered == ["0", "1", "2", "3", "test-0", "test-1"]
    assert {r["event_type"] for r in rows(dataset.events)} == {"click"}


def test_retailrocket_fixture(tmp_path):
    out = tmp_path / "out"
    prepare("retailrocket", source_dir(tmp_path, "retailrocket"), out)
    check_layout(out)
    dataset = load_prepared(out)

    test_session = events_of(dataset.test_events, "test-502")
    assert [item for _, item, _ in test_session] == ["9", "7", "8", "9"]
    assert test_session[0][2] == 1441941000 * 1000
    assert rows(dataset.cases)[1] == {
        "case_id": 1,
        "session_id": "test-502",
        "prefix": ["9", "7", "8"],
        "label": "9",
    }
    # Synthetic training times end before the first real test time.
    train_max = max(r["ts"] for r in rows(dataset.events))
    assert train_max < 1441940543 * 1000


def test_benchmark_malformed_item(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    write_gz(
        source / "train_sessions.tsv.gz", "session_index\titems\n0\t1 2\n1\t3 x 5\n"
    )
    with pytest.raises(DataFormatError) as info:
        prepare("diginetica", source, tmp_path / "out")
    assert info.value.path == str(source / "train_sessions.tsv.gz")
    assert info.value.line == 3
    assert "'x'" in info.value.reason
    assert str(info.value).startswith(f"{source / 'train_sessions.tsv.gz'}:3:")


def test_invalid_utf8_names_line(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    with gzip.open(source / "train_sessions.tsv.gz", "wb") as handle:
        handle.write(b"session_index\titems\n0\t1 2\n1\t3 \xff 5\n2\t4 5\n")
    with pytest.raises(DataFormatError) as info:
        prepare("diginetica", source, tmp_path / "out")
    assert info.value.line == 3
    assert "UTF-8" in info.value.reason


def test_corrupt_gzip_file(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    (source / "test_pairs.tsv.gz").write_bytes(b"pair_index\tprefix\n")
    with pytest.raises(DataFormatError) as info:
        prepare("diginetica", source, tmp_path / "out")
    assert info.value.path.endswith("test_pairs.tsv.gz")
    assert "gzip" in info.value.reason


def test_benchmark_missing_field(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    write_gz(source / "test_sessions.tsv.gz", "test_session_index\titems\n0\n")
    with pytest.raises(DataFormatError) as info:
        prepare("diginetica", source, tmp_path / "out")
    assert info.value.line == 2
    assert "1 fields; expected 2" in info.value.reason


def test_benchmark_wrong_header(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    write_gz(source / "train_sessions.tsv.gz", "index\titems\n0\t1 2\n")
    with pytest.raises(DataFormatError) as info:
        prepare("diginetica", source, tmp_path / "out")
    assert info.value.line == 1
    assert "session_index" in info.value.reason


def test_benchmark_pair_not_prefix(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    write_gz(
        source / "test_pairs.tsv.gz",
        "pair_index\ttest_session_index\tprefix\tlabel\n0\t0\t1 4\t3\n",
    )
    with pytest.raises(DataFormatError) as info:
        prepare("diginetica", source, tmp_path / "out")
    assert info.value.line == 2
    assert "not a prefix" in info.value.reason


def test_diginetica_purchases_fixture(tmp_path):
    out = tmp_path / "out"
    manifest = prepare(
        "diginetica-purchases", source_dir(tmp_path, "diginetica_raw"), out
    )
    check_layout(out)
    dataset = load_prepared(out)

    day = 1456790400000  # 2016-03-01 00:00 UTC, the session's earliest eventdate
    assert events_of(dataset.events, "40") == [
        ("click", "504", day + 60000),
        ("click", "501", day + 120000),
        ("purchase", "501", day + 900000),
        ("purchase", "502", day + 900000),
    ]
    user_ids = {r["session_id"]: r["user_id"] for r in rows(dataset.events)}
    assert user_ids == {"40": None, "41": "17", "42": "23"}
    assert manifest["counts"]["items"] == 6
    items = {r["item_id"]: r["category"] for r in rows(dataset.items)}
    assert items["503"] == "12"
    assert manifest["synthetic_ts"] is True


def test_yoochoose_clicks_fixture(tmp_path):
    out = tmp_path / "out"
    prepare("yoochoose-clicks", source_dir(tmp_path, "yoochoose_clicks"), out)
    check_layout(out)
    dataset = load_prepared(out)

    assert events_of(dataset.events, "10") == [
        ("click", "214000001", 1396437466940),
        ("click", "214000002", 1396437500000),
    ]
    assert events_of(dataset.test_events, "20")[0][2] == 1396860669277


def test_rees46_fixture(tmp_path):
    out = tmp_path / "out"
    manifest = prepare("rees46", source_dir(tmp_path, "rees46"), out)
    check_layout(out)
    dataset = load_prepared(out)

    session = "aaaaaaaa-0000-4000-8000-000000000001"
    assert [t for t, _, _ in events_of(dataset.events, session)] == [
        "click",
        "click",
        "cart_add",
        "cart_remove",
        "purchase",
    ]
    assert manifest["sources"][0]["dropped"] == {"missing user_session": 1}
    assert manifest["counts"]["events"]["users"] == 2
    items = {r["item_id"]: r for r in rows(dataset.items)}
    assert items["1000001"]["category"] == "electronics.smartphone"
    # category_id stays an exact string where category_code is empty.
    assert items["3000001"]["category"] == "2103807459595387999"
    assert items["2000001"]["brand"] == "brand, with comma"
    assert items["2000001"]["price"] == 12.0
    assert items["3000001"]["price"] is None


def test_rees46_unknown_event_type(tmp_path):
    source = source_dir(tmp_path, "rees46")
    header = (FIXTURES / "rees46" / "rees46_2019_oct_head.csv").read_text()
    header = header.splitlines()[0]
    bad = "2019-10-01 08:00:00 UTC,wishlist,1,2,,,1.0,3,s\n"
    write_gz(source / "rees46_2019_oct_head.csv.gz", header + "\n" + bad)
    with pytest.raises(DataFormatError) as info:
        prepare("rees46", source, tmp_path / "out")
    assert info.value.line == 2
    assert "'wishlist'" in info.value.reason


def test_unclosed_quote_names_the_line_it_opens(tmp_path):
    source = source_dir(tmp_path, "bestbuy")
    lines = (FIXTURES / "bestbuy" / "bestbuy_train.csv").read_text().splitlines()
    # Line 5 opens a quote that nothing closes, so it swallows the rest.
    lines[4] = '"' + lines[4]
    write_gz(source / "bestbuy_train.csv.gz", "\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as info:
        prepare("bestbuy", source, tmp_path / "out")
    assert info.value.line == 5
    assert info.value.reason == (
        f"1 fields; expected 6 separated by ','; a quoted field runs on to line "
        f"{len(lines)}, so a closing quote may be missing"
    )


@pytest.mark.parametrize(
    ("dataset", "fixture", "file", "row", "reason"),
    [
        (
            "yoochoose-clicks",
            "yoochoose_clicks",
            "yoochoose-clicks-100k_train_full.tsv.gz",
            "SessionId\tItemId\tTime\n10\t214000001\tinf\n",
            "Time is 'inf'; expected Unix seconds",
        ),
        (
            "taobao",
            "taobao",
            "taobao_userbehavior_head.csv.gz",
            "7,1001,501,pv,99999999999999999999\n",
            "timestamp is '99999999999999999999'; expected a time from 2001-09-09 "
            "to 2100-01-01 UTC",
        ),
        (
            "taobao",
            "taobao",
            "taobao_userbehavior_head.csv.gz",
            "7,1001,501,pv,0\n",
            "timestamp is '0'; expected a time from 2001-09-09 to 2100-01-01 UTC",
        ),
        (
            "otto",
            "otto",
            "otto_train.jsonl.gz",
            '{"session": 1, "events": [{"aid": 5, "ts": 1659304800, "type": "clicks"}]}'
            "\n",
            "events[0] of session 1: ts is '1659304800'; expected a time from "
            "2001-09-09 to 2100-01-01 UTC",
        ),
    ],
    ids=["infinite-seconds", "int64-overflow", "zero", "otto-seconds"],
)
def test_times_out_of_range_name_the_line(
    tmp_path, dataset, fixture, file, row, reason
):
    # Before the range check these went through as a traceback (overflow) or
    # as events that validate_event rejects (before 2001).
    source = source_dir(tmp_path, fixture)
    write_gz(source / file, row)
    with pytest.raises(DataFormatError) as info:
        prepare(dataset, source, tmp_path / "out")
    assert (info.value.line, info.value.reason) == (row.count("\n"), reason)


def test_taobao_fixture(tmp_path):
    out = tmp_path / "out"
    manifest = prepare("taobao", source_dir(tmp_path, "taobao"), out)
    check_layout(out)
    dataset = load_prepared(out)

    assert manifest["sources"][0]["dropped"] == {"fav has no event type": 2}
    # User 7 pauses for more than 30 minutes between 1511544120 and 1511550000.
    assert events_of(dataset.events, "7-0") == [
        ("click", "1001", 1511544000000),
        ("click", "1002", 1511544060000),
        ("cart_add", "1002", 1511544120000),
    ]
    assert [t for t, _, _ in events_of(dataset.events, "7-1")] == ["click", "purchase"]
    # Items of dropped fav rows still reach the catalog.
    assert "1005" in {r["item_id"] for r in rows(dataset.items)}


def test_bestbuy_fixture(tmp_path):
    out = tmp_path / "out"
    manifest = prepare("bestbuy", source_dir(tmp_path, "bestbuy"), out)
    check_layout(out)
    dataset = load_prepared(out)

    user = "0a" * 20
    session = [
        (r["event_type"], r["item_id"], r["query"])
        for r in rows(dataset.events)
        if r["session_id"] == f"{user}-0"
    ]
    # Two clicks after one search: the search is written once.
    assert session == [
        ("search", None, "lcd tv"),
        ("click", "1000011", None),
        ("click", "1000012", None),
    ]
    later = [r["query"] for r in rows(dataset.events) if r["session_id"] == f"{user}-1"]
    assert later == ["camera, red", None]
    assert manifest["sources"][0]["dropped"] == {"empty query": 1}
    test_types = {r["event_type"] for r in rows(dataset.test_events)}
    assert test_types == {"search"}


def test_otto_fixture(tmp_path):
    out = tmp_path / "out"
    prepare("otto", source_dir(tmp_path, "otto"), out)
    check_layout(out)
    dataset = load_prepared(out)

    assert events_of(dataset.events, "3") == [
        ("click", "11", 1659304800025),
        ("cart_add", "12", 1659304860000),
        ("purchase", "12", 1659304900000),
        ("purchase", "13", 1659304900000),
    ]


def test_otto_malformed_json(tmp_path):
    source = source_dir(tmp_path, "otto")
    good = (FIXTURES / "otto" / "otto_train.jsonl").read_text().splitlines()[0]
    write_gz(source / "otto_train.jsonl.gz", good + '\n{"session": 5, "events": [\n')
    with pytest.raises(DataFormatError) as info:
        prepare("otto", source, tmp_path / "out")
    assert info.value.path.endswith("otto_train.jsonl.gz")
    assert info.value.line == 2


def test_jdsearch_fixture(tmp_path):
    out = tmp_path / "out"
    manifest = prepare("jdsearch", source_dir(tmp_path, "jdsearch"), out)
    check_layout(out)
    dataset = load_prepared(out)

    session = [
        (r["event_type"], r["item_id"], r["query"])
        for r in rows(dataset.events)
        if r["session_id"] == "u0-0"
    ]
    assert session == [
        ("click", "9001", None),
        ("search", None, "333 444"),
        ("click", "9002", None),
        ("cart_add", "9003", None),
    ]
    assert manifest["sources"][0]["dropped"] == {"follow has no event type": 1}
    test = [
        (r["event_type"], r["item_id"], r["query"])
        for r in rows(dataset.test_events)
        if r["session_id"] == "u0-test"
    ]
    assert test == [
        ("search", None, "111 222"),
        ("click", "9001", None),
        ("purchase", "9003", None),
    ]
    items = {r["item_id"]: r["category"] for r in rows(dataset.items)}
    assert items == {"9001": "3", "9002": "5"}


def test_every_dataset_has_fixture_run():
    tested = {
        "diginetica",
        "yoochoose",
        "retailrocket",
        "diginetica-purchases",
        "yoochoose-clicks",
        "rees46",
        "taobao",
        "bestbuy",
        "otto",
        "jdsearch",
    }
    assert set(DATASETS) == tested


def test_unknown_dataset_lists_names(tmp_path):
    with pytest.raises(NotFoundError) as info:
        prepare("movielens", tmp_path, tmp_path / "out")
    assert "'movielens'" in str(info.value)
    assert "diginetica" in str(info.value)
    assert "rees46" in str(info.value)


def test_missing_source_env(tmp_path, monkeypatch):
    monkeypatch.delenv("RECSYS_DATA_DIR", raising=False)
    with pytest.raises(ConfigError, match="RECSYS_DATA_DIR"):
        prepare("otto", None, tmp_path / "out")


def test_missing_source_file(tmp_path):
    source = source_dir(tmp_path, "srgnn")
    (source / "test_pairs.tsv.gz").unlink()
    with pytest.raises(NotFoundError, match=re.escape("test_pairs.tsv.gz")):
        prepare("diginetica", source, tmp_path / "out")


def test_load_prepared_missing_files(tmp_path):
    with pytest.raises(NotFoundError, match="recsys data prepare"):
        load_prepared(tmp_path / "nothing")
    with pytest.raises(NotFoundError, match=re.escape("manifest.json")):
        load_prepared(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(NotFoundError, match=re.escape("events.parquet")):
        load_prepared(tmp_path)


def test_prepare_removes_stale_files(tmp_path):
    out = tmp_path / "out"
    prepare("diginetica", source_dir(tmp_path, "srgnn"), out)
    assert (out / "test_cases.parquet").exists()
    prepare("otto", source_dir(tmp_path, "otto"), out)
    assert not (out / "test_cases.parquet").exists()
    assert load_prepared(out).name == "otto"


def test_cli_prepare_prints_counts(tmp_path, capsys):
    source = source_dir(tmp_path, "srgnn")
    code = main(
        [
            "data",
            "prepare",
            "--dataset",
            "diginetica",
            "--source",
            str(source),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "train_sessions.tsv.gz" in output
    assert "test_cases: 3 rows" in output
    events_line = next(
        line for line in output.splitlines() if line.startswith("events")
    )
    assert events_line.split()[1:4] == ["4", "10", "6"]


def test_cli_unknown_dataset(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "prepare", "--dataset", "nope", "--out", "x"])
    assert info.value.code == 2
    assert "diginetica" in capsys.readouterr().err


def test_cli_malformed_line_exit_code(tmp_path, capsys):
    source = source_dir(tmp_path, "srgnn")
    write_gz(source / "train_sessions.tsv.gz", "session_index\titems\n0\t\n")
    code = main(
        [
            "data",
            "prepare",
            "--dataset",
            "diginetica",
            "--source",
            str(source),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "train_sessions.tsv.gz:2:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prepare", "synth"])
def test_cli_out_is_a_file(tmp_path, capsys, command):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    source = source_dir(tmp_path, "otto")
    args = {
        "prepare": ["prepare", "--dataset", "otto", "--source", str(source)],
        "synth": ["synth", "--users", "5", "--items", "12", "--sessions", "5"],
    }[command]

    assert main(["data", *args, "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"recsys data: error: invalid --out: {out} is a file; expected a folder\n"
    )


REPO_DATA = Path(__file__).parent.parent / "data"


def test_shipped_rees46_demo(tmp_path):
    manifest = prepare("rees46", REPO_DATA / "rees46", tmp_path / "out")
    counts = manifest["counts"]["events"]
    assert counts["events"] == 17_434
    assert counts["event_types"] == {"cart_add": 165, "click": 17_055, "purchase": 214}
    assert counts["users"] == 4_504
    assert counts["sessions"] == 5_066
    assert counts["items"] == 6_493


def test_shipped_otto_demo(tmp_path):
    manifest = prepare("otto", REPO_DATA / "otto", tmp_path / "out")
    counts = manifest["counts"]["events"]
    assert counts["events"] == 862
    assert counts["sessions"] == 20
    assert counts["items"] == 510
