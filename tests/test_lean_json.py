"""surgeon's JSON writer gives, character for character, what
``json.dumps(jsonable(x), indent=2, ensure_ascii=True, allow_nan=False)`` gives: the
documents of real commands, and seeded random documents with every kind of value."""

from __future__ import annotations

import enum
import json
import random

import numpy as np
import pytest
from conftest import SAMPLES, run_cli

from surgeon.jsonout import _indented, _NotPlain, dumps, jsonable

STRINGS = ["", "a", "é", "\u2603", "\U0001f600", "\udcff", '\x00\x1f\n\t"\\', "a b/c", "\u2028"]
FLOATS = [0.0, -0.0, 0.1, 1e-320, 5e-324, 1.7976931348623157e308, -2.5, 1e16, 123456789.125]
INTS = [0, -1, 7, 2**63, -(10**40)]


def _reference(value) -> str:
    return json.dumps(jsonable(value), indent=2, ensure_ascii=True, allow_nan=False)


def _random_value(rng: random.Random, depth: int):
    kind = rng.randrange(9 if depth < 5 else 6)
    if kind == 0:
        return rng.choice(STRINGS) + str(rng.random())
    if kind == 1:
        return rng.choice(FLOATS) * rng.choice([1, -1, 3.5])
    if kind == 2:
        return rng.choice(INTS)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice([float("nan"), float("inf"), -float("inf")])
    if kind == 5:
        return rng.choice([{}, [], ()])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {
        rng.choice(STRINGS) + str(i): _random_value(rng, depth + 1) for i in range(rng.randrange(5))
    }


@pytest.mark.parametrize("seed", range(40))
def test_random_documents_are_written_as_json_writes_them(seed):
    value = _random_value(random.Random(seed), 0)
    assert dumps(value) == _reference(value)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


def test_values_that_are_not_plain_types():
    value = {
        "enum": Colour.RED,
        "int enum": Level.HIGH,
        "str subclass": Name("n"),
        Name("key"): 1,
        3: "int key",
        None: "null key",
        2.5: "float key",
        "numpy": [np.float32(0.5), np.int64(3), np.arange(3), np.float64("nan")],
        "set": {3, 1, 2},
        "bytes": b"raw\xfe",
        "complex": 1 + 2j,
    }
    assert dumps(value) == _reference(value)


def test_a_value_outside_the_plain_types_is_left_to_json():
    # Nothing jsonable gives can be refused, but the writer still never guesses.
    with pytest.raises(_NotPlain):
        _indented({"x": {1, 2}})
    with pytest.raises(_NotPlain):
        _indented([float("nan")])


def test_a_debug_document_is_written_as_json_writes_it():
    result = run_cli("debug", SAMPLES / "tiny_yolo.onnx", "--json")
    document = json.loads(result.stdout)
    assert result.stdout.rstrip("\n") == _reference(document)
