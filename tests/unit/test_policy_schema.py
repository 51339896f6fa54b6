"""Policy files against their schema: every malformed policy is an InputError (exit 2) that names
the file and the field, never a crash; valid policies round-trip. Property-based (hypothesis)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fp16guard.errors import InputError
from fp16guard.numerics.policy import DTYPES, PART_KINDS, POLICIES, Policy, get_policy

BAD = [
    ([], "JSON object"),
    ({"dtype": "float16"}, "'name'"),
    ({"name": "x", "fp32_blocks": "abc"}, "'fp32_blocks'"),
    ({"name": "x", "fp32_blocks": [1.5]}, "'fp32_blocks'"),
    ({"name": "x", "fp32_blocks": [True]}, "'fp32_blocks'"),
    ({"name": "x", "fp32_layer_norms": "yes"}, "'fp32_layer_norms'"),
    ({"name": "x", "fast_attention": 1}, "'fast_attention'"),
    ({"name": "x", "fp32_parts": "abc"}, "'fp32_parts'"),
    ({"name": "x", "fp32_parts": {"mlp": 3}}, "'fp32_parts'"),
    ({"name": "x", "fp32_parts": {"mlp": ["3"]}}, "'fp32_parts'"),
    ({"name": 7}, "'name'"),
    ({"name": "x", "dtype": None}, "'dtype'"),
    ({"name": "x", "dtype": "float8"}, "float8"),
    ({"name": "x", "colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("data", "field"), BAD, ids=[json.dumps(d)[:40] for d, _ in BAD])
def test_a_malformed_policy_is_an_input_error_naming_the_field(data, field):
    with pytest.raises(InputError, match=field):
        Policy.from_dict(data)


@pytest.mark.parametrize(("data", "field"), BAD, ids=[json.dumps(d)[:40] for d, _ in BAD])
def test_a_malformed_policy_file_names_the_file_and_the_field(tmp_path, data, field):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=field) as caught:
        get_policy(str(path))
    assert str(path) in str(caught.value)
    # The same inside a file written by --save-policy.
    path.write_text(json.dumps({"fp16guard_policy": 1, "policy": data}))
    with pytest.raises(InputError, match=field):
        get_policy(path)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b'{"policy": [1]}', "'policy' must be a JSON object"),
        (b'{"policy": "fp16"}', "'policy' must be a JSON object"),
        (b"[" * 100_000, "JSON"),
    ],
)
def test_an_unreadable_policy_file_is_an_input_error(tmp_path, content, words):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=words):
        get_policy(path)


def test_a_boolean_is_not_truthy_text():
    """"yes" must be refused, not taken as true."""
    with pytest.raises(InputError, match="true or false"):
        Policy.from_dict({"name": "x", "fp32_layer_norms": "yes"})
    assert Policy.from_dict({"name": "x", "fp32_layer_norms": True}).fp32_layer_norms is True


def test_a_new_field_is_checked_from_its_type_without_edits():
    """A field added to Policy with a str or bool default is checked by the same code (as
    ``layout`` was): from_dict derives the expected type from the dataclass."""

    @dataclass(frozen=True)
    class Extended(Policy):
        kernel: str = "auto"
        compiled: bool = False

    assert Extended.from_dict({"name": "x", "kernel": "flash"}).kernel == "flash"
    with pytest.raises(InputError, match="'kernel' must be a string"):
        Extended.from_dict({"name": "x", "kernel": 3})
    with pytest.raises(InputError, match="'compiled' must be true or false"):
        Extended.from_dict({"name": "x", "compiled": "no"})
    with pytest.raises(InputError, match="'layout' must be a string"):
        Policy.from_dict({"name": "x", "layout": 3})


def test_every_built_in_policy_round_trips():
    for policy in POLICIES.values():
        assert Policy.from_dict(policy.to_dict()) == policy
        assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


# --------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["name", "dtype", "fp32_layer_norms", "fp32_positional", "fp32_residual", "fp32_blocks", "fp32_parts",
     "fast_attention"]
)
# Objects with the policy's own keys and arbitrary values reach the type checks, not just the
# unknown-field check.
policy_like = st.dictionaries(field_names, json_values | st.lists(st.integers(-3, 5), max_size=3), max_size=8)


def _parse(data):
    try:
        return Policy.from_dict(data)
    except InputError:
        return None


@given(json_values | policy_like)
@settings(max_examples=300, deadline=None)
def test_any_json_value_is_a_policy_or_an_input_error(data):
    policy = _parse(data)
    if policy is not None:
        assert Policy.from_dict(policy.to_dict()) == policy


@given(st.binary(max_size=200) | policy_like.map(lambda d: json.dumps(d).encode()))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_in_a_policy_file_are_a_policy_or_an_input_error(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    try:
        get_policy(path)
    except InputError as exc:
        assert str(path) in str(exc)


blocks = st.lists(st.integers(1, 64), max_size=5)
valid_policies = st.builds(
    lambda name, dtype, ln, pos, res, fast, bl, parts: Policy(
        name, dtype, ln or res, pos, res, tuple(bl), tuple(parts), fast
    ),
    st.text(min_size=1, max_size=12),
    st.sampled_from(DTYPES),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    blocks,
    st.lists(st.tuples(st.sampled_from(PART_KINDS), st.integers(1, 64)), max_size=5),
)


@given(valid_policies)
@settings(max_examples=200, deadline=None)
def test_valid_policies_round_trip_through_json(policy):
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert get_policy(policy.to_dict()) == policy
