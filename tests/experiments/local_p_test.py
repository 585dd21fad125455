"""Tests of experiments/local_p.py: the diagnostics of local-p's window centres, on trajectories with known answers."""

from __future__ import annotations

import numpy as np

from experiments import local_p


def _trajectory(position, source_length):
    return local_p.Trajectory(index=0, position=np.asarray(position, np.float32), source_length=source_length)


def test_a_window_on_the_diagonal_has_no_error_and_full_correlation():
    source_length, steps = 20, 10
    on_diagonal = _trajectory((np.arange(steps) + 0.5) * source_length / steps, source_length)
    stats = local_p.diagnostics([on_diagonal])
    assert stats["p_diag_error"] < 1e-6
    np.testing.assert_allclose(stats["p_corr"], 1.0, atol=1e-6)
    np.testing.assert_allclose(stats["p_mean"], 0.5, atol=1e-6)


def test_a_parked_window_has_no_spread_and_the_diagonals_mean_distance():
    source_length, steps = 20, 10
    parked = _trajectory(np.full(steps, 20.0), source_length)  # stuck at the end of the source
    stats = local_p.diagnostics([parked])
    assert stats["p_spread"] == 0.0 and stats["p_corr"] == 0.0
    np.testing.assert_allclose(stats["p_mean"], 1.0)
    np.testing.assert_allclose(stats["p_diag_error"], np.mean(1.0 - (np.arange(steps) + 0.5) / steps))


def test_positions_and_gradients_of_a_tiny_model(tmp_path):
    import jax
    import flax.linen as nn
    from attention_jax.models.seq2seq import Seq2Seq
    from experiments import data

    model = Seq2Seq(vocab_size=12, embed_dim=4, hidden_size=4, attention="luong", score="general", mode="local_p",
                    window=1)
    examples = [data.Example(tuple(range(4, 4 + n)), tuple(range(5, 5 + m)), "s", "t") for n, m in ((3, 2), (6, 4))]
    src = np.ones((1, 8), np.int32)
    params = nn.unbox(model.init(jax.random.key(0), src, np.array([8]), src))["params"]
    traj = local_p.positions(model, params, examples, buckets=(8,), batch_size=2)
    assert [len(t.position) for t in traj] == [3, 5] and [t.source_length for t in traj] == [3, 6]
    assert all(np.all((t.position >= 0) & (t.position <= t.source_length)) for t in traj)
    batch = next(data.batches(examples, 2, (8,), shuffle=False))
    norms = local_p.gradient_norms(model, params, batch)
    assert set(norms) == {"rms_grad_w_p", "rms_grad_v_p", "rms_grad_other"}
    assert all(np.isfinite(v) and v > 0 for v in norms.values())
    path = local_p.figure({0: traj, 10: traj}, str(tmp_path / "p.png"), title="t")
    assert (tmp_path / "p.png").stat().st_size > 1000 and path.endswith("p.png")
