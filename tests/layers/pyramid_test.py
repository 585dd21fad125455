"""Tests for attention_jax/layers/pyramid.py: spatial pyramid pooling and pyramid attention pooling.

He et al. 2014 (arXiv:1406.4729, §2.3) with the bins of an exact partition, bin i of n over a side a being
[floor(i a / n), floor((i + 1) a / n)): n non-empty bins covering every pixel once for any a >= n, where the
paper's window / stride recipe miscounts. Pyramid attention pooling (APANet, arXiv:1808.00288, in the form the
module documents): a softmax over each bin's real pixels of one tanh scorer per level. Each is compared with a
float64 numpy loop written from those equations.
"""

import math
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized
from jax import test_util as jtu

from attention_jax.core import pooling
from attention_jax.layers import pyramid

B, C = 3, 2

# Jitted once per shape: the functions loop over the bins, which eager dispatch makes slow.
_spp = jax.jit(pyramid.spatial_pyramid_pool, static_argnums=1, static_argnames=("mode",))
_pap = jax.jit(pyramid.pyramid_attention_pool, static_argnums=2)


def _raises(exc_types, *fragments):
    pattern = "".join(f"(?=[\\s\\S]*{re.escape(str(f))})" for f in fragments)
    return pytest.raises(exc_types, match=pattern)


def _inputs(seed, shape, dtype=np.float32):
    """Distinct values (no ties for max) in [-2, 2)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape) * 4.0 - 2.0).astype(dtype)


def _mask(h, w):
    """Image 0 all real; image 1 real in its top-left (h // 2) x (w // 2) only; image 2 scattered."""
    mask = np.ones((B, h, w), bool)
    mask[1, h // 2:] = False
    mask[1, :, w // 2:] = False
    mask[2] = np.random.default_rng(h * w).random((h, w)) < 0.6
    mask[2, 0, 0] = True
    return mask


def _np_edges(size, n):
    """The bin edges written with real division: bin i is [floor(i size / n), floor((i + 1) size / n))."""
    edges = [math.floor(i * size / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _np_spp(x, levels, mode, mask):
    """Float64 spatial pyramid pooling: level, then bins row-major, then channel; 0 for a bin with no pixel."""
    x = np.asarray(x, np.float64)
    out = []
    for b in range(x.shape[0]):
        row = []
        for n in levels:
            for r0, r1 in _np_edges(x.shape[1], n):
                for c0, c1 in _np_edges(x.shape[2], n):
                    real = x[b, r0:r1, c0:c1][mask[b, r0:r1, c0:c1]]  # [k, C]
                    if not len(real):
                        row.append(np.zeros(x.shape[3]))
                    else:
                        row.append(real.max(0) if mode == "max" else real.mean(0))
        out.append(np.concatenate(row))
    return np.stack(out)


def _np_scores(x, w, b, v):
    return np.tanh(np.asarray(x, np.float64) @ w + b) @ v[:, 0]  # [B, H, W]


def _np_pap(x, logits, levels, mask):
    """Float64 pyramid attention pooling: per level, per bin, softmax of the real pixels' scores, weighted sum."""
    x = np.asarray(x, np.float64)
    pooled, weights = [], np.zeros((x.shape[0], len(levels)) + x.shape[1:3])
    for b in range(x.shape[0]):
        row = []
        for l, n in enumerate(levels):
            for r0, r1 in _np_edges(x.shape[1], n):
                for c0, c1 in _np_edges(x.shape[2], n):
                    m = mask[b, r0:r1, c0:c1]
                    if not m.any():
                        row.append(np.zeros(x.shape[3]))
                        continue
                    e = logits[b, l, r0:r1, c0:c1][m]
                    a = np.exp(e - e.max())
                    a /= a.sum()
                    row.append(a @ x[b, r0:r1, c0:c1][m])
                    block = np.zeros(m.shape)
                    block[m] = a
                    weights[b, l, r0:r1, c0:c1] = block
        pooled.append(np.concatenate(row))
    return np.stack(pooled), weights


def _scorers(seed, levels, channels, hidden, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((channels, hidden)).astype(dtype), rng.standard_normal(hidden).astype(dtype),
             rng.standard_normal((hidden, 1)).astype(dtype)) for _ in levels]


# Sizes for which the paper's recipe (window ceil(a / n), stride floor(a / n)) is wrong, and others.
ODD_SIZES = ((11, 4), (11, 3), (5, 3), (7, 3), (7, 4), (13, 3), (13, 4), (13, 6), (6, 6), (1, 1), (100, 7))


class BinsTest(parameterized.TestCase):

    @parameterized.parameters(*ODD_SIZES)
    def test_n_nonempty_bins_tile_the_side(self, size, n):
        bins = pyramid.pyramid_bins(size, n)
        self.assertLen(bins, n)
        self.assertEqual(bins[0][0], 0)
        self.assertEqual(bins[-1][1], size)
        for (_, stop), (start, _) in zip(bins[:-1], bins[1:]):
            self.assertEqual(stop, start)  # consecutive: no gap, no overlap
        covered = np.zeros(size, int)
        for start, stop in bins:
            self.assertIn(stop - start, (size // n, -(-size // n)))
            covered[start:stop] += 1
        np.testing.assert_array_equal(covered, 1)  # every pixel in exactly one bin
        self.assertEqual(list(bins), _np_edges(size, n))

    def test_the_papers_recipe_miscounts_or_misses_pixels_on_these_sizes(self):
        """Why the partition: window ceil(a / n) with stride floor(a / n) is wrong for these sizes."""
        for size, n in ((11, 4), (5, 3), (7, 4), (11, 3), (13, 6)):
            win, stride = -(-size // n), size // n
            count = (size - win) // stride + 1
            covered = set()
            for k in range(count):
                covered.update(range(k * stride, k * stride + win))
            wrong = count != n or covered != set(range(size))
            self.assertEqual(wrong, (size, n) != (13, 6), f"{size=} {n=}: {count} windows, covering {len(covered)}")
            self.assertLen(pyramid.pyramid_bins(size, n), n)

    def test_bad_sizes_raise(self):
        with _raises(ValueError, "3 pixels", "n = 4"):
            pyramid.pyramid_bins(3, 4)
        with _raises(ValueError, "n"):
            pyramid.pyramid_bins(3, 0)

    def test_pyramid_size(self):
        self.assertEqual(pyramid.pyramid_size((1, 2, 4), 5), 5 * 21)
        with _raises(ValueError, "levels"):
            pyramid.pyramid_size((), 5)

    def test_every_pixel_reaches_exactly_one_bin_per_level(self):
        """An impulse at each pixel in turn lights exactly the one bin of each level that holds it."""
        h, w, levels = 11, 7, (1, 2, 4)
        impulses = np.eye(h * w, dtype=np.float32).reshape(h * w, h, w, 1)
        for mode in pyramid.MODES:
            out = np.asarray(_spp(impulses, levels, mode=mode))  # [HW, 21]
            offset = 0
            for n in levels:
                lit = out[:, offset:offset + n * n] != 0
                np.testing.assert_array_equal(lit.sum(1), 1, err_msg=f"{mode}, level {n}")
                rows, cols = _np_edges(h, n), _np_edges(w, n)
                for p in range(h * w):
                    r, c = divmod(p, w)
                    i = next(k for k, (a, z) in enumerate(rows) if a <= r < z)
                    j = next(k for k, (a, z) in enumerate(cols) if a <= c < z)
                    self.assertTrue(lit[p, i * n + j], f"{mode}, level {n}, pixel {(r, c)}")
                    if mode == "avg":  # its bin's mean is 1 / (pixels in the bin)
                        size = (rows[i][1] - rows[i][0]) * (cols[j][1] - cols[j][0])
                        self.assertAlmostEqual(out[p, offset + i * n + j], 1.0 / size, places=6)
                offset += n * n


SPP_CASES = (("11x7_124", 11, 7, (1, 2, 4)), ("5x13_135", 5, 13, (1, 3, 5)), ("13x13_2346", 13, 13, (2, 3, 4, 6)))


class SpatialPyramidPoolTest(chex.TestCase):

    @parameterized.product(case=tuple(c[0] for c in SPP_CASES), mode=pyramid.MODES)
    def test_matches_numpy(self, case, mode):
        _, h, w, levels = next(c for c in SPP_CASES if c[0] == case)
        x, mask = _inputs(0, (B, h, w, C)), _mask(h, w)
        got = _spp(x, levels, mode=mode, mask=mask)
        chex.assert_shape(got, (B, C * sum(n * n for n in levels)))
        np.testing.assert_allclose(got, _np_spp(x, levels, mode, mask), rtol=1e-5, atol=1e-6)
        unmasked = _spp(x, levels, mode=mode)
        np.testing.assert_allclose(unmasked, _np_spp(x, levels, mode, np.ones((B, h, w), bool)), rtol=1e-5,
                                   atol=1e-6)
        self.assertTrue(np.any(np.abs(np.asarray(got) - np.asarray(unmasked)) > 1e-3), "the mask changes nothing")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*pyramid.MODES)
    def test_jit_equals_eager(self, mode):
        x, mask = _inputs(10, (B, 7, 5, C)), _mask(7, 5)
        got = self.variant(lambda x, mask: pyramid.spatial_pyramid_pool(x, (1, 2, 3), mode=mode, mask=mask))(x, mask)
        np.testing.assert_allclose(got, _np_spp(x, (1, 2, 3), mode, mask), rtol=1e-5, atol=1e-6)

    def test_layout_is_level_then_bins_row_major_then_channel(self):
        """When n divides H and W, level n is the 2-D pooling with window (H / n, W / n), flattened [n, n, C]."""
        x = _inputs(1, (B, 8, 12, C))
        for mode, pool in (("max", pooling.max_pool_2d), ("avg", pooling.avg_pool_2d)):
            got = np.asarray(_spp(x, (1, 2, 4), mode=mode))
            offset = 0
            for n in (1, 2, 4):
                want = np.asarray(pool(x, (8 // n, 12 // n))).reshape(B, n * n * C)
                np.testing.assert_allclose(got[:, offset:offset + n * n * C], want, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{mode} {n}")
                offset += n * n * C

    def test_any_size_under_jit_gives_the_same_length(self):
        jitted = jax.jit(lambda x: pyramid.spatial_pyramid_pool(x, (1, 2, 4)))
        for h, w in ((4, 4), (5, 9), (11, 7), (17, 6)):
            x = _inputs(h + w, (2, h, w, C))
            got = jitted(x)
            chex.assert_shape(got, (2, 21 * C))
            np.testing.assert_allclose(got, _np_spp(x, (1, 2, 4), "max", np.ones((2, h, w), bool)), rtol=1e-6)

    def test_gradients_in_float64(self):
        with jax.enable_x64(True):
            x, mask = _inputs(2, (B, 7, 5, C), np.float64), _mask(7, 5)
            for mode in pyramid.MODES:
                with self.subTest(mode):
                    f = jax.jit(lambda a, mode=mode: _spp(a, (1, 2, 3), mode=mode, mask=mask))
                    self.assertEqual(f(x).dtype, jnp.float64)
                    jtu.check_grads(f, (x,), order=1, modes=("rev",), eps=1e-4, atol=1e-6, rtol=1e-6)

    def test_nan_at_masked_pixels_reaches_nothing_and_dead_bins_are_zero(self):
        h, w, levels = 6, 5, (1, 2, 3)
        x, mask = _inputs(3, (B, h, w, C)), _mask(h, w)
        for mode in pyramid.MODES:
            f = jax.jit(lambda a, mode=mode: pyramid.spatial_pyramid_pool(a, levels, mode=mode, mask=mask))
            g = jax.jit(jax.grad(lambda a, f=f: jnp.sum(f(a) ** 2)))
            clean = f(x)
            for value in (np.nan, np.inf, -np.inf):
                dirty = np.where(mask[..., None], x, value).astype(np.float32)
                np.testing.assert_array_equal(f(dirty), clean)
                grad = np.asarray(g(dirty))
                self.assertTrue(np.isfinite(grad).all(), f"{mode} {value}")
                np.testing.assert_array_equal(grad[~mask], 0.0)
            # image 1 is real in its top-left 3 x 2 only: its level-2 bins other than (0, 0) are dead
            level2 = np.asarray(clean)[1, C:5 * C].reshape(4, C)
            np.testing.assert_array_equal(level2[1:], 0.0)
            self.assertTrue(np.all(level2[0] != 0.0))

    def test_module_equals_function_and_has_no_parameters(self):
        x, mask = _inputs(4, (B, 6, 7, C)), _mask(6, 7)
        module = pyramid.SpatialPyramidPooling(levels=(1, 3), mode="avg")
        variables = module.init(jax.random.PRNGKey(0), x, mask)
        self.assertEqual(jax.tree_util.tree_leaves(variables), [])
        np.testing.assert_array_equal(module.apply(variables, x, mask),
                                      pyramid.spatial_pyramid_pool(x, (1, 3), mode="avg", mask=mask))

    def test_dtypes_and_empty_axes(self):
        x = jnp.asarray(_inputs(5, (B, 5, 5, C)), jnp.bfloat16)
        for mode in pyramid.MODES:
            got = _spp(x, (1, 2), mode=mode)
            self.assertEqual(got.dtype, jnp.bfloat16)
            np.testing.assert_allclose(np.asarray(got, np.float64),
                                       _np_spp(np.asarray(x, np.float64), (1, 2), mode, np.ones((B, 5, 5), bool)),
                                       rtol=2e-2, atol=2e-2)
            self.assertEqual(_spp(jnp.zeros((0, 4, 4, C)), (1, 2), mode=mode).shape,
                             (0, 5 * C))
            self.assertEqual(_spp(jnp.zeros((2, 4, 4, 0)), (1, 2), mode=mode).shape, (2, 0))

    def test_bad_arguments_raise_before_compute(self):
        x, mask = _inputs(6, (B, 3, 5, C)), _mask(3, 5)

        def spp(*args, **kwargs):
            return jax.eval_shape(lambda: pyramid.spatial_pyramid_pool(*args, **kwargs))

        with _raises(ValueError, "H = 3", "W = 5", "(1, 2, 4)", "[4]"):
            spp(x, (1, 2, 4))
        with _raises(ValueError, "H = 3", "W = 2"):
            spp(x[:, :, :2], (1, 3))
        for levels in ((), (0,), (1, -2), "124", (1.5,), (True,), 4):
            with _raises(ValueError, "levels"):
                spp(x, levels)
        with _raises(ValueError, "mode", "sum"):
            spp(x, (1,), mode="sum")
        with _raises(ValueError, "inputs", (B, 3, 5)):
            spp(x[..., 0], (1,))
        with _raises(ValueError, "mask", (B, 3, 4), (B, 3, 5, C)):
            spp(x, (1,), mask=mask[:, :, 1:])
        with _raises(TypeError, "mask"):
            spp(x, (1,), mask=mask.astype(np.float32))


class PyramidAttentionPoolTest(chex.TestCase):

    LEVELS = (1, 2, 3)

    def _case(self, seed, h=7, w=5, dtype=np.float32):
        x, mask = _inputs(seed, (B, h, w, C), dtype), _mask(h, w)
        params = _scorers(seed, self.LEVELS, C, 4)
        logits = np.stack([_np_scores(x, *p) for p in params], axis=1)  # [B, L, H, W]
        return x, mask, params, logits

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        x, mask, params, logits = self._case(0)
        pooled, weights = self.variant(lambda x, e, m: pyramid.pyramid_attention_pool(x, e, self.LEVELS, mask=m))(
            x, logits.astype(np.float32), mask)
        want_pooled, want_weights = _np_pap(x, logits, self.LEVELS, mask)
        chex.assert_shape(pooled, (B, C * 14))
        self.assertEqual(pooled.dtype, jnp.float32)
        self.assertEqual(weights.dtype, jnp.float32)
        np.testing.assert_allclose(pooled, want_pooled, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(weights)[np.broadcast_to(~mask[:, None], weights.shape)], 0.0)
        # weights sum to 1 over the real pixels of each live bin, to 0 over a dead one
        for l, n in enumerate(self.LEVELS):
            for r0, r1 in _np_edges(7, n):
                for c0, c1 in _np_edges(5, n):
                    live = mask[:, r0:r1, c0:c1].any((1, 2))
                    np.testing.assert_allclose(np.asarray(weights)[:, l, r0:r1, c0:c1].sum((1, 2)), live * 1.0,
                                               atol=1e-6)
        # the scorer
        scores = pyramid.tanh_scores(x, *(p.astype(np.float32) for p in params[1]))
        np.testing.assert_allclose(scores, logits[:, 1], rtol=1e-5, atol=1e-5)

    def test_equal_scores_give_average_pooling_and_one_pixel_bins_copy_it(self):
        x, mask, _, logits = self._case(1)
        flat = np.zeros_like(logits)
        pooled, _ = _pap(x, flat, self.LEVELS, mask=mask)
        np.testing.assert_allclose(pooled, _spp(x, self.LEVELS, mode="avg", mask=mask),
                                   rtol=1e-5, atol=1e-6)
        # 3 x 3 map at level 3: every bin is one pixel, whatever the scores
        small = _inputs(2, (B, 3, 3, C))
        pooled, weights = _pap(small, logits[:, :1, :3, :3], (3,))
        np.testing.assert_allclose(pooled, small.reshape(B, 9 * C), rtol=1e-6)
        np.testing.assert_allclose(weights, 1.0, rtol=1e-6)
        # and the scores matter when bins hold several pixels (positive control)
        scored, _ = _pap(x, logits, self.LEVELS, mask=mask)
        self.assertGreater(float(jnp.max(jnp.abs(scored - _pap(x, flat, self.LEVELS,
                                                                                           mask=mask)[0]))), 1e-2)

    def test_gradients_in_float64(self):
        with jax.enable_x64(True):
            x, mask, params, logits = self._case(3, h=5, w=4, dtype=np.float64)
            f = jax.jit(lambda a, e: pyramid.pyramid_attention_pool(a, e, self.LEVELS, mask=mask))
            self.assertEqual(f(x, logits)[0].dtype, jnp.float64)
            jtu.check_grads(f, (x, logits), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-6)
            jtu.check_grads(jax.jit(lambda *p: pyramid.tanh_scores(x, *p)), params[0], order=1, modes=("rev",),
                            eps=1e-5, atol=1e-6, rtol=1e-6)

    def test_nan_at_masked_pixels_reaches_nothing_and_dead_bins_are_zero(self):
        x, mask, params, logits = self._case(4)
        module = pyramid.PyramidAttentionPooling(levels=self.LEVELS, hidden=4)
        variables = module.init(jax.random.PRNGKey(0), x, mask)

        def loss(variables, a, e):
            pooled, weights = _pap(a, e, self.LEVELS, mask=mask)
            modular, modular_weights = module.apply(variables, a, mask, return_weights=True)
            return jnp.sum(pooled ** 2) + jnp.sum(weights) + jnp.sum(modular ** 2) + jnp.sum(modular_weights ** 2)

        value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        clean = value_and_grad(variables, x, logits.astype(np.float32))
        for value in (np.nan, np.inf, -np.inf):
            dirty_x = np.where(mask[..., None], x, value).astype(np.float32)
            dirty_e = np.where(mask[:, None], logits, value).astype(np.float32)
            got = value_and_grad(variables, dirty_x, dirty_e)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(clean)):
                self.assertTrue(np.isfinite(np.asarray(a)).all(), f"{value} leaked")
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        grads = clean[1]
        np.testing.assert_array_equal(np.asarray(grads[1])[~mask], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[2])[np.broadcast_to(~mask[:, None], logits.shape)], 0.0)
        # image 1 is real in its top-left 3 x 2: its level-2 bins other than (0, 0) pool to 0
        pooled, _ = _pap(x, logits, self.LEVELS, mask=mask)
        level2 = np.asarray(pooled)[1, C:5 * C].reshape(4, C)
        np.testing.assert_array_equal(level2[1:], 0.0)
        self.assertTrue(np.all(level2[0] != 0.0))

    def test_an_image_with_no_real_pixel_gives_zeros_and_zero_gradients(self):
        x, _, _, logits = self._case(5)
        mask = np.zeros((B, 7, 5), bool)
        pool = jax.jit(lambda a, e: pyramid.pyramid_attention_pool(a, e, self.LEVELS, mask=mask))
        grads = jax.jit(jax.grad(lambda a, e: jnp.sum(pool(a, e)[0]), argnums=(0, 1)))(x, logits)
        pooled, weights = pool(x, logits)
        for value in (pooled, weights, *grads):
            np.testing.assert_array_equal(value, 0.0)

    def test_module_scores_with_its_parameters(self):
        x, mask, _, _ = self._case(6)
        module = pyramid.PyramidAttentionPooling(levels=self.LEVELS, hidden=4)
        boxed = module.init(jax.random.PRNGKey(1), x, mask)["params"]
        names = {k: v.names for k, v in boxed.items()}
        for l in range(3):
            self.assertEqual(names[f"w_{l}"], ("embed", "mlp"))
            self.assertEqual(names[f"b_{l}"], ("mlp",))
            self.assertEqual(names[f"v_{l}"], ("mlp", None))
        params = nn.unbox(boxed)
        apply = jax.jit(module.apply, static_argnames=("return_weights",))
        rng = np.random.default_rng(7)
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        pooled, weights = apply({"params": params}, x, mask, return_weights=True)
        logits = np.stack([_np_scores(x, *(np.asarray(params[f"{k}_{l}"], np.float64) for k in "wbv"))
                           for l in range(3)], axis=1)
        want_pooled, want_weights = _np_pap(x, logits, self.LEVELS, mask)
        np.testing.assert_allclose(pooled, want_pooled, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weights, want_weights, rtol=1e-5, atol=1e-6)
        self.assertEqual(apply({"params": params}, x, mask).shape, (B, 14 * C))
        # one scorer per level: changing level 2's scorer changes only level 2's block
        moved = dict(params, v_2=params["v_2"] + 1.0)
        other = np.asarray(apply({"params": moved}, x, mask))
        np.testing.assert_array_equal(other[:, :5 * C], np.asarray(pooled)[:, :5 * C])
        self.assertGreater(np.abs(other[:, 5 * C:] - np.asarray(pooled)[:, 5 * C:]).max(), 1e-4)

    def test_dtypes(self):
        x, mask, params, logits = self._case(8)
        pooled, weights = _pap(jnp.asarray(x, jnp.bfloat16), logits.astype(np.float32),
                                                         self.LEVELS, mask=mask)
        self.assertEqual(pooled.dtype, jnp.bfloat16)
        self.assertEqual(weights.dtype, jnp.float32)
        scores = pyramid.tanh_scores(jnp.asarray(x, jnp.bfloat16), *(p.astype(np.float32) for p in params[0]))
        self.assertEqual(scores.dtype, jnp.float32)

    def test_bad_arguments_raise_before_compute(self):
        x, mask, params, logits = self._case(9)

        def pap(*args, **kwargs):
            return jax.eval_shape(lambda: pyramid.pyramid_attention_pool(*args, **kwargs))

        with _raises(ValueError, "logits", (B, 3, 7, 5), (B, 2, 7, 5)):
            pap(x, logits[:, :2], self.LEVELS)
        with _raises(ValueError, "logits", (B, 3, 7, 4)):
            pap(x, logits[..., :4], self.LEVELS)
        with _raises(ValueError, "logits", "rank 4"):
            pap(x, logits[:, 0], self.LEVELS)
        with _raises(TypeError, "logits"):
            pap(x, logits.astype(np.int32), self.LEVELS)
        with _raises(ValueError, "H = 7", "W = 5", "[6]"):
            pap(x, np.zeros((B, 2, 7, 5), np.float32), (1, 6))
        with _raises(ValueError, "mask", (B, 7, 4)):
            pap(x, logits, self.LEVELS, mask=mask[..., :4])
        w, b, v = params[0]
        with _raises(ValueError, "w.shape=(2, 4)", "v.shape=(4, 2)"):
            pyramid.tanh_scores(x, w, b, np.zeros((4, 2)))
        with _raises(ValueError, "v", "rank 2", (4,)):
            pyramid.tanh_scores(x, w, b, v[:, 0])
        with _raises(ValueError, "w.shape=(3, 4)", "C = 2"):
            pyramid.tanh_scores(x, np.zeros((3, 4)), b, v)
        module = pyramid.PyramidAttentionPooling(levels=(1,), hidden=0)
        with _raises(ValueError, "hidden"):
            module.init(jax.random.PRNGKey(0), x)
        with _raises(TypeError, "return_weights"):
            pyramid.PyramidAttentionPooling(levels=(1,), hidden=2).init(jax.random.PRNGKey(0), x, None, "yes")


if __name__ == "__main__":
    absltest.main()
