from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.trace import Request, Trace, from_lengths, load_trace


def test_mooncake_jsonl_roundtrip(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    recs = [
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 27, "input_length": 512, "output_length": 0, "hash_ids": [0]},
    ]
    f.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    tr = load_trace(f)
    assert tr.hash_block_size == 512
    assert [r.hash_ids for r in tr.requests] == [(0, 1), (0,)]
    assert tr.requests[1].arrival_ms == 27.0
    assert load_trace(f, limit=1).requests == tr.requests[:1]


def test_mooncake_too_few_hash_ids_reports_numbers(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(
        json.dumps({"timestamp": 0, "input_length": 1025, "output_length": 1, "hash_ids": [0, 1]})
    )
    with pytest.raises(InvalidArgumentError, match=r"2 hash ids .* 1025 \(need 3"):
        load_trace(f)


def test_bad_json_record_names_line(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 5, "hash_ids": [1]}\n{"x": 1}\n')
    with pytest.raises(InvalidArgumentError, match=r"t.jsonl:2"):
        load_trace(f)


def test_azure_csv(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:05.0000000,0,8\n"
    )
    tr = load_trace(f)
    assert not tr.has_prefix_info
    assert [(r.input_len, r.output_len) for r in tr.requests] == [(4808, 10), (3180, 8)]
    assert tr.requests[0].arrival_ms == 0.0
    assert tr.requests[1].arrival_ms == pytest.approx(52.0, abs=1e-3)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not found"):
        load_trace(tmp_path / "nope.jsonl")
    f = tmp_path / "x.jsonl"
    f.write_text("")
    with pytest.raises(InvalidArgumentError, match="unknown trace format"):
        load_trace(f, "parquet")


def test_request_validation() -> None:
    with pytest.raises(InvalidArgumentError, match="input_len must be > 0, got 0"):
        Trace([Request(0.0, 0, 1)], None)
    with pytest.raises(InvalidArgumentError, match="output_len must be >= 0, got -1"):
        from_lengths([(3, -1)])
    assert from_lengths([(3, 1), (4, 2)]).summary()["mean_input_tokens"] == 3.5


def test_gzipped_trace_reads_like_the_plain_one(tmp_path: Path) -> None:
    import gzip

    plain = tmp_path / "t.jsonl"
    plain.write_text(
        json.dumps({"timestamp": 3, "input_length": 600, "output_length": 2, "hash_ids": [0, 1]})
        + "\n"
    )
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_trace(packed).requests == load_trace(plain).requests
    csv_gz = tmp_path / "a.csv.gz"
    csv_gz.write_bytes(
        gzip.compress(
            b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,48,1\n"
        )
    )
    assert load_trace(csv_gz).requests[0].input_len == 48  # .csv under .gz: Azure


def test_azure_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "\n"  # a blank line still counts as a line of the file
        "2023-11-16 18:17:04.0319600,x,8\n"
    )
    with pytest.raises(InvalidArgumentError, match=r"a.csv:4: bad Azure record: .*'x'"):
        load_trace(f)
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808\n")
    with pytest.raises(InvalidArgumentError, match=r"a.csv:2: .*missing field 'GeneratedTokens'"):
        load_trace(f)


def test_mooncake_record_that_is_not_an_object(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text("[1, 2]\n")
    with pytest.raises(InvalidArgumentError, match=r"t.jsonl:1: .*expected a JSON object"):
        load_trace(f)
