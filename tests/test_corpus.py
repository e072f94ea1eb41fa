"""A fast, seeded subset of benchmarks/onnx_corpus.py: onnx's backend node tests through
surgeon's load/save, tap and extract, each checked against plain onnxruntime runs.

The full corpus (1,884 cases) runs in about a minute and a half on two cores with
``python benchmarks/onnx_corpus.py``; here a seeded sample of 60 cases plus the cases that
once broke surgeon (sequence and optional values, If/Loop/Scan, inputs that are axes or
sizes, data-dependent shapes) must show no failure attributed to surgeon.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT

SAMPLE = 60
SEED = 0

# Cases that exposed bugs, kept in every run so the fixes stay fixed.
REGRESSIONS = [
    "test_identity_opt",  # optional input: feeds and reports of non-tensor values
    "test_identity_sequence",
    "test_if_seq",  # If returning a sequence; bool scalar feed
    "test_loop13_seq",  # Loop carrying a sequence
    "test_scan9_sum",
    "test_sequence_insert_at_back",  # sequence outputs compared element by element
    "test_sequence_map_add_2_sequences_expanded",
    "test_split_to_sequence_1",  # sequence-typed boundary of an extraction
    "test_reduce_l2_do_not_keepdims_example_expanded",  # an input that is axes
    "test_affine_grid_2d_expanded",  # an input that is a size; data-dependent shapes
    "test_affine_grid_3d_expanded",  # dims seen in one run, frozen into an untaken If branch
    "test_range_float_type_positive_delta_expanded",
    "test_attention_4d_fp16_expanded",  # onnxruntime's float16 rounding: not surgeon
    # A `FloatNegInf` Constant masks the scores: deliberate, not "the first Inf" (debug
    # exited 1 on such healthy models); a fully masked row's Softmax then gives NaN,
    # which a Where replaces: inherited from the -inf, not born.
    "test_attention_23_boolmask_fullymasked_row_nan_robustness_expanded",
]

# Known failures attributed to surgeon, with the reason; excluded from the sample.
KNOWN: dict[str, str] = {}


def _corpus_module():
    spec = importlib.util.spec_from_file_location(
        "onnx_corpus", ROOT / "benchmarks" / "onnx_corpus.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus():
    module = _corpus_module()
    cases = module.load_cases()
    by_name = {c.name: c for c in cases}
    pool = [c for c in cases if c.name not in KNOWN and c.name not in REGRESSIONS]
    chosen = module.select_cases(pool, match=None, sample=SAMPLE, seed=SEED)
    chosen += [by_name[n] for n in REGRESSIONS if n in by_name]
    return module, chosen


def test_sampled_node_tests_show_no_surgeon_failure(corpus, tmp_path):
    module, cases = corpus
    results = module.run_cases(cases, workers=1)
    counts = module.summarise(results)
    failures = [f.line() for r in results for f in r.failures if f.surgeon]
    assert failures == []
    assert counts["tried"] == len(cases)
    # Most node tests run on onnxruntime's CPU provider, and every runnable one was
    # loaded, saved, tapped and (where a node reads an input) extracted.
    assert counts["runnable"] >= 0.7 * counts["tried"]
    steps = counts["steps"]
    assert steps["load_save"]["pass"] == counts["runnable"]
    assert steps["tap"]["pass"] == counts["runnable"]
    assert steps["debug"]["pass"] == counts["runnable"]
    assert steps["extract"]["pass"] + steps["extract"]["n/a"] == counts["runnable"]
    assert counts["extractions"] > len(cases)


def test_onnxruntime_float16_rounding_is_listed_but_not_blamed_on_surgeon(corpus):
    module, cases = corpus
    case = next(c for c in cases if c.name == "test_attention_4d_fp16_expanded")
    (result,) = module.run_cases([case], workers=1)
    listed = [f for f in result.failures if not f.surgeon]
    assert listed and all("float16" in f.reason for f in listed)
    # surgeon's own verifier caught the change in the tapped model's outputs
    assert any(f.step == "tap" and "verification failed" in f.reason for f in listed)


def test_independent_birth_rule_sees_a_division_by_zero():
    """The corpus's own NaN/Inf rule (written apart from surgeon's) on a plain run."""
    import numpy as np
    import onnx

    module = _corpus_module()
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        agraph (float[2] x) => (float[2] y) {
            z = Sub (x, x)
            q = Div (x, z)
            y = Relu (q)
        }"""
    )
    x = np.array([1.0, 2.0], np.float32)
    values = {"x": x, "z": x - x, "q": np.array([np.inf, np.inf], np.float32)}
    values["y"] = values["q"]
    assert module.expected_births(proto, values) == ["q"]


def test_comparisons_are_bitwise():
    module = _corpus_module()
    import numpy as np

    a = np.array([0.0, 1.0], np.float32)
    assert module.same_bits(a, a.copy()) is None
    zero = np.zeros(1, np.float32)
    assert module.same_bits(zero, -zero) is not None  # 0.0 and -0.0 differ in their bits
    assert module.same_bits([a, a], [a, a]) is None
    assert module.same_bits([a], [a, a]) == "different sequence lengths"
    assert module.same_bits(None, None) is None
    assert module.same_bits(a, a.astype(np.float64)) is not None
