"""Canonical JSON and its hash: what the compliance record stores for every input and output."""

import hashlib
import math

import pytest

from apps.inference.hashing import canonical_json, sha256_hex


def test_canonical_form_sorts_keys_and_drops_whitespace():
    assert canonical_json({"b": [1, 2.5, None], "a": {"y": True, "x": "z"}}) == (
        b'{"a":{"x":"z","y":true},"b":[1,2.5,null]}'
    )


def test_equal_payloads_hash_equally_whatever_the_key_order():
    first = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2.0]]}, "params": {"k": 1, "j": 2}}
    second = {"params": {"j": 2, "k": 1}, "dataframe_split": {"data": [[1.0, 2.0]], "columns": ["a", "b"]}}
    assert sha256_hex(first) == sha256_hex(second)


def test_different_payloads_hash_differently():
    assert sha256_hex({"a": [1.0, 2.0]}) != sha256_hex({"a": [2.0, 1.0]})
    assert sha256_hex({"a": 1}) != sha256_hex({"a": 1.0})


def test_non_ascii_is_written_as_utf8_not_escaped():
    assert canonical_json({"name": "café ☕"}) == '{"name":"café ☕"}'.encode()


def test_floats_use_the_shortest_round_trip_form():
    assert canonical_json([0.1, 1e-07, 1e22, -0.0]) == b"[0.1,1e-07,1e+22,-0.0]"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(value):
    with pytest.raises(ValueError, match="JSON compliant"):
        canonical_json({"x": [1.0, value]})
    with pytest.raises(ValueError, match="JSON compliant"):
        sha256_hex(value)


def test_hash_is_sha256_of_the_canonical_bytes():
    value = {"b": 1, "a": [1, 2]}
    assert sha256_hex(value) == hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    assert len(sha256_hex(value)) == 64
