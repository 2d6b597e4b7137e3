import pandas as pd
import pyarrow.parquet as pq
import pytest

from winnow.tasks import lake


def test_write_then_query_through_duckdb(fresh_home):
    lake.write("metrics", pd.DataFrame({"run_id": ["a", "a"], "name": ["auroc", "ap"], "value": [0.9, 0.8]}))
    lake.write("metrics", pd.DataFrame({"run_id": ["b"], "name": ["auroc"], "value": [0.7]}))
    df = lake.sql("SELECT run_id, value FROM metrics WHERE name = 'auroc' ORDER BY run_id")
    assert df.to_dict("list") == {"run_id": ["a", "b"], "value": [0.9, 0.7]}


def test_same_content_twice_adds_nothing(fresh_home):
    frame = pd.DataFrame({"x": [1, 2, 3]})
    p1 = lake.write("t", frame)
    p2 = lake.write("t", frame)
    assert p1 == p2
    assert len(list((fresh_home / "lake" / "t").glob("*.parquet"))) == 1


def test_a_failed_write_leaves_no_partial_file(fresh_home, monkeypatch):
    real = pq.write_table

    def crash_midway(table, where, **kwargs):
        real(table.slice(0, 1), where, **kwargs)  # some bytes reach the temp file...
        raise OSError("disk full")  # ...then the write dies

    monkeypatch.setattr(pq, "write_table", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        lake.write("samples", pd.DataFrame({"x": range(100)}), part="batch1")
    folder = fresh_home / "lake" / "samples"
    assert list(folder.iterdir()) == []  # neither the part nor a temp file
    # and the view layer sees no table at all
    monkeypatch.setattr(pq, "write_table", real)
    with pytest.raises(Exception, match="samples"):
        lake.sql("SELECT * FROM samples")


def test_replace_overwrites_one_part(fresh_home):
    lake.replace("review_queue", pd.DataFrame({"id": [1], "status": ["open"]}), part="q")
    lake.replace("review_queue", pd.DataFrame({"id": [1], "status": ["accepted"]}), part="q")
    assert lake.sql("SELECT status FROM review_queue")["status"].tolist() == ["accepted"]


def test_invalid_table_name(fresh_home):
    with pytest.raises(ValueError, match="invalid lake table name"):
        lake.write("../escape", pd.DataFrame({"x": [1]}))
