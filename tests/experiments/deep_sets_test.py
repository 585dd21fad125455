"""Tests of experiments.deep_sets on fixture images made here (no Fashion-MNIST).

Checks: the set builders (sizes, padding, packing, fixed test sets, targets); every aggregator sees only the
real items and the set models ignore their order; the table (deep_sets and gru) trains, learns the fixture's sums
far better than a constant guess, reports every size with the paired CIs and p against deep_sets, writes the
claims and figures, and re-reports without training on a rerun; bad flags exit 2 with one line.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments import cli
from experiments import deep_sets
from experiments.configs import deep_sets as sets_config
from experiments.data import fashion_mnist

REPO = str(pathlib.Path(__file__).resolve().parents[2])
FIXTURE_LABELS = (0, 4, 9)


def _images(n: int, seed: int) -> fashion_mnist.Split:
    """28x28 uint8 images whose pattern is their class: 0 blank, 4 horizontal stripes, 9 vertical stripes."""
    labels = np.random.default_rng(seed).choice(FIXTURE_LABELS, size=n).astype(np.int32)
    stripes = np.where((np.arange(28) // 2) % 2 == 0, 255, 0).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    images[labels == 4] = np.broadcast_to(stripes[:, None], (28, 28))
    images[labels == 9] = np.broadcast_to(stripes[None, :], (28, 28))
    return fashion_mnist.Split(images, labels)


def test_train_sets_pad_after_the_real_items():
    index = deep_sets.train_sets(50, 200, 2, 5, np.random.default_rng(0))
    assert index.shape == (200, 5) and index.max() < 50
    real = index >= 0
    sizes = real.sum(axis=1)
    assert sizes.min() == 2 and sizes.max() == 5  # 200 draws reach both ends of [2, 5]
    assert np.array_equal(real, np.arange(5)[None, :] < sizes[:, None])  # real items first


def test_packed_batch_holds_exactly_the_real_items():
    budget = deep_sets.item_budget(16, 1, 10)
    assert budget == int(np.ceil(16 * 5.5 + 4 * np.sqrt(16 * 99 / 12))) and budget < 160
    first = deep_sets.packed_batch(100, 16, 1, 10, budget, np.random.default_rng([3, 0, 7]))
    again = deep_sets.packed_batch(100, 16, 1, 10, budget, np.random.default_rng([3, 0, 7]))
    for a, b in zip(first, again):  # the same generator seed, the same batch (resume)
        np.testing.assert_array_equal(a, b)
    index, items, slots = first
    n = int(np.sum(index >= 0))
    assert items.shape == slots.shape == (budget,) and n <= budget
    assert np.all(items[n:] == -1) and np.all(slots[n:] == 16 * 10)
    np.testing.assert_array_equal(index.reshape(-1)[slots[:n]], items[:n])
    # A budget of exactly B * S never redraws; the smallest possible budget forces sets of one item.
    tight = deep_sets.packed_batch(100, 4, 1, 3, 4, np.random.default_rng(0))[0]
    assert np.all(np.sum(tight >= 0, axis=1) == 1)


def test_fixed_sets_are_distinct_items_and_the_same_for_a_seed_and_size():
    sets = deep_sets.fixed_sets(30, 7, 50, seed=5)
    assert sets.shape == (50, 7) and sets.max() < 30
    assert all(len(set(row)) == 7 for row in sets.tolist())
    np.testing.assert_array_equal(sets, deep_sets.fixed_sets(30, 7, 50, seed=5))
    assert not np.array_equal(sets, deep_sets.fixed_sets(30, 7, 50, seed=6))
    with pytest.raises(ValueError, match="distinct"):
        deep_sets.fixed_sets(5, 6, 1, seed=0)


def test_set_sums_skip_the_padding():
    labels = np.array([3, 1, 4, 1, 5], np.int32)
    index = np.array([[0, 2, -1], [4, 4, 1], [-1, -1, -1]])
    np.testing.assert_array_equal(deep_sets.set_sums(labels, index), [7.0, 11.0, 0.0])


def test_aggregators_see_only_the_real_items():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 6, 8)).astype(np.float32)
    mask = np.arange(6)[None, :] < np.array([[2], [6], [4]])
    noisy = np.where(mask[..., None], features, np.nan).astype(np.float32)  # NaN in every padded slot
    order = np.array([1, 0, 2, 3, 4, 5])  # swaps the first two items (real in every set)
    # gru runs the same nn.RNN(seq_lengths) path as lstm (only the carry differs); the table below trains it.
    for aggregator in ("deep_sets", "attention_pooling", "lstm"):
        model = deep_sets.SetSummer(aggregator, conv_features=(8,), embed_dim=8, hidden=8, num_heads=2)
        params = nn.unbox(jax.jit(functools.partial(model.init, method=deep_sets.SetSummer.aggregate))(
            jax.random.key(0), features, mask))
        aggregate = jax.jit(functools.partial(model.apply, method=deep_sets.SetSummer.aggregate))
        out = np.asarray(aggregate(params, features, mask))
        assert out.shape == (3,)
        np.testing.assert_allclose(aggregate(params, noisy, mask), out, rtol=1e-5, err_msg=aggregator)
        cut = aggregate(params, features[:1, :2], mask[:1, :2])  # the first set without its padding
        np.testing.assert_allclose(cut, out[:1], rtol=1e-5, atol=1e-6, err_msg=aggregator)
        swapped = np.asarray(aggregate(params, features[:, order], mask[:, order]))
        if aggregator in ("deep_sets", "attention_pooling"):
            np.testing.assert_allclose(swapped, out, rtol=1e-5, atol=1e-6, err_msg=aggregator)
        else:  # the recurrent rows read the items in order
            assert not np.allclose(swapped, out), aggregator


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deep_sets")
    config = sets_config.get_config()
    config.data.min_train_size, config.data.max_train_size = 1, 4
    config.data.dev_images = 100
    config.model.conv_features = (8,)
    config.model.embed_dim = 16
    config.model.hidden = 16
    config.train.batch_size = 12
    config.train.learning_rate = 3e-2
    config.train.num_steps = 60
    config.train.log_every = 20
    config.train.eval_every = 60
    config.train.checkpoint_every = 0  # the loop saves after the last step anyway
    config.eval.test_sizes = (2, 6)
    config.eval.test_sets = 40
    config.eval.dev_sets = 20
    config.eval.significance_samples = 200
    config.eval.batch_size = 100
    set_data = deep_sets.prepare(config, {"train": _images(700, 0), "test": _images(300, 1)})
    workdir = str(tmp / "work")
    rows = ["deep_sets", "gru"]
    records = deep_sets.run(config, rows, workdir, command="test", set_data=set_data)
    return config, rows, workdir, records, set_data


def test_table(finished):
    config, rows, workdir, records, set_data = finished
    assert [(r["row"], r["seed"]) for r in records] == [("deep_sets", 0), ("gru", 0)]
    assert set_data.info["train_images"] == 600 and set_data.info["dev_images"] == 100
    for r in records:
        assert r["steps"] == 60 and r["baseline_row"] == "deep_sets" and r["test_sizes"] == [2, 6]
        for n in (2, 6):
            assert 0.0 <= r[f"test_s{n}_accuracy"] <= 100.0
            assert r[f"test_s{n}_item_mae"] == pytest.approx(r[f"test_s{n}_mae"] / n)
    gru = records[1]
    assert gru["test_s6_item_mae_ci"][0] <= gru["test_s6_item_mae_ci"][1] and 0 <= gru["test_s6_item_mae_p"] <= 1
    assert 0 <= gru["test_s6_accuracy_p"] <= 1
    scores = json.load(open(os.path.join(workdir, "gru", "seed_0", "test_scores.json"), encoding="utf-8"))
    assert len(scores["test_s6_accuracy"]) == len(scores["test_s2_item_mae"]) == 40
    # Learnable: Deep Sets' error is far below that of the best constant guess (the median sum).
    targets = deep_sets.set_sums(set_data.test.labels, set_data.test_sets[6])
    constant = float(np.mean(np.abs(targets - np.median(targets)))) / 6
    assert records[0]["test_s6_item_mae"] < 0.25 * constant, (records[0]["test_s6_item_mae"], constant)
    text = open(os.path.join(workdir, "results.md"), encoding="utf-8").read()
    assert "| deep_sets | " in text and "baseline" in text and "### Claims" in text
    assert "acc % @2" in text and "MAE/item @6" in text
    for figure in ("loss_curves.png", "accuracy_by_size.png", "item_mae_by_size.png"):
        assert os.path.exists(os.path.join(workdir, figure)) and f"({figure})" in text
    claims = {c["name"]: c for c in map(json.loads, open(os.path.join(workdir, "claims.jsonl"), encoding="utf-8"))}
    assert set(claims) == {"Deep Sets beats GRU and LSTM on sets of 6", "GRU's error per item grows from sets of 2 "
                           "to 6", "LSTM's error per item grows from sets of 2 to 6"}
    assert claims["Deep Sets beats GRU and LSTM on sets of 6"]["missing"] == ["lstm"]  # lstm not run here
    grows = claims["GRU's error per item grows from sets of 2 to 6"]
    assert grows["holds"] in (True, False) and grows["p"] is not None and grows["rows"]["gru @ 6"]["n"] == 1


def test_rerun_only_reports(finished):
    config, rows, workdir, records, set_data = finished
    stamp = os.path.getmtime(os.path.join(workdir, "deep_sets", "seed_0", "metrics.jsonl"))
    again = deep_sets.run(config, rows, workdir, command="test", set_data=set_data)
    assert [r["test_s6_mae"] for r in again] == [r["test_s6_mae"] for r in records]
    assert os.path.getmtime(os.path.join(workdir, "deep_sets", "seed_0", "metrics.jsonl")) == stamp


def test_validate_names_the_bad_value():
    config = sets_config.get_config()
    deep_sets.validate(config, list(sets_config.ROWS))
    for path, value, expected in [("eval.test_sizes", (5, 20, 10), "test_sizes"),
                                  ("eval.test_sizes", (5, 20000), "test_pool"),
                                  ("model.conv_features", (12,), "GroupNorm"),
                                  ("data.max_train_size", 0, "max_train_size")]:
        bad = sets_config.get_config()
        section, field = path.split(".")
        bad[section][field] = value
        with pytest.raises(deep_sets.training.ConfigError, match=expected) as err:
            deep_sets.validate(bad, list(sets_config.ROWS))
        assert "fix" in str(err.value)


def test_bad_flag_exits_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.deep_sets", "--preset=smoke", f"--workdir={tmp_path}",
                           "--config.eval.test_sizes=(10,5)"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == cli.EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "test_sizes" in lines[0] and "fix" in lines[0], proc.stderr[-2000:]
