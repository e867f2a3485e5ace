"""The PyTorch multi-resolution hash grid, and its tinycudann twin (CUDA only)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from selfsup.representations.hash_grid import HashGridEncoding, make_hash_encoding


def test_dense_level_reads_table_entries_at_vertices_and_interpolates_linearly():
    enc = HashGridEncoding(levels=1, features_per_level=2, log2_hashmap_size=12, base_resolution=5, growth=1.0)
    scale, res, entries = enc.sizes[0]
    assert (scale, res) == (4.0, 5) and res**3 <= entries  # dense: no hashing
    with torch.no_grad():
        enc.params.copy_(torch.randn_like(enc.params))
    table = enc.params.view(-1, 2)
    # Vertex (i, j, k) sits at x = (index - 0.5) / scale.
    ijk = torch.tensor([[1, 2, 3], [4, 1, 2]])
    x = (ijk.float() - 0.5) / scale
    want = table[ijk[:, 0] + ijk[:, 1] * res + ijk[:, 2] * res * res]
    assert torch.allclose(enc(x), want, atol=1e-6)
    # Half-way between two vertices along x: the mean of their entries.
    mid = (torch.tensor([[1.5, 2.0, 3.0]]) - 0.5) / scale
    a, b = table[1 + 2 * res + 3 * res * res], table[2 + 2 * res + 3 * res * res]
    assert torch.allclose(enc(mid)[0], 0.5 * (a + b), atol=1e-6)


def test_hashed_levels_have_bounded_tables_and_get_gradients():
    enc = HashGridEncoding(levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=8, growth=2.0)
    assert all(entries <= 2**10 for _, _, entries in enc.sizes)
    out = enc(torch.rand(64, 3))
    assert out.shape == (64, 8)
    out.square().sum().backward()
    assert enc.params.grad.abs().sum() > 0


def test_fixed_points_path_matches_gathering_in_values_and_table_gradient():
    # Levels both dense and hashed (collisions in a 2^9 table), as in the decode grid.
    enc = HashGridEncoding(levels=4, features_per_level=2, log2_hashmap_size=9, base_resolution=4, growth=2.0)
    with torch.no_grad():
        enc.params.copy_(torch.randn_like(enc.params))
    x = torch.rand(500, 3)
    weights = torch.randn(500, 8)
    ref = enc(x)
    (ref * weights).sum().backward()
    grad_ref = enc.params.grad.clone()
    enc.params.grad = None
    for _ in range(2):  # built, then read from the cache
        out = enc(x, fixed=True)
        assert torch.allclose(out, ref, atol=1e-6)
    (out * weights).sum().backward()
    assert torch.allclose(enc.params.grad, grad_ref, atol=1e-5)
    other = torch.rand(500, 3)  # other points rebuild the matrix
    assert torch.allclose(enc(other, fixed=True), enc(other), atol=1e-6)


def test_gradients_are_bit_identical_between_runs():
    # Exact resume needs a deterministic backward (advanced indexing's accumulate is not on CPU).
    enc = HashGridEncoding(levels=3, features_per_level=2, log2_hashmap_size=10, base_resolution=8, growth=2.0)
    x, w = torch.rand(50000, 3), torch.randn(50000, 6)
    grads = []
    for fixed in (False, False, True, True):
        enc.params.grad = None
        (enc(x, fixed=fixed) * w).sum().backward()
        grads.append(enc.params.grad.clone())
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[2], grads[3])


@pytest.mark.skipif(importlib.util.find_spec("tinycudann") is not None, reason="tinycudann is installed")
def test_tcnn_backend_without_tinycudann_says_how_to_install():
    with pytest.raises(ImportError, match="tiny-cuda-nn"):
        make_hash_encoding("tcnn")
    with pytest.raises(ValueError, match="torch"):
        make_hash_encoding("cuda")


@pytest.mark.requires_cuda
def test_tcnn_matches_the_pytorch_twin():
    kwargs = dict(levels=6, features_per_level=2, log2_hashmap_size=14, base_resolution=4, growth=1.8)
    fast = make_hash_encoding("tcnn", **kwargs)
    ref = HashGridEncoding(**kwargs).cuda()
    with torch.no_grad():
        ref.params.copy_(fast.encoding.params.float())
    x = torch.rand(4096, 3, device="cuda")
    assert torch.allclose(fast(x), ref(x), atol=1e-3)
