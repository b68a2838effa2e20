"""Each transform of repnas_mm.rep.transforms against F.conv2d."""
import pytest
import torch
import torch.nn.functional as F

from repnas_mm.rep import transforms as T

from .equivalence import assert_close_rel


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_fuse_bn_matches_conv_then_bn():
    x = torch.randn(2, 4, 7, 7)
    kernel = torch.randn(6, 4, 3, 3)
    mean, var = torch.randn(6), torch.rand(6) + 0.5
    gamma, beta = torch.randn(6), torch.randn(6)
    ref = F.batch_norm(
        F.conv2d(x, kernel, padding=1), mean, var, gamma, beta, eps=1e-5)
    k, b = T.fuse_bn(kernel, mean, var, gamma, beta, 1e-5)
    assert_close_rel(F.conv2d(x, k, b, padding=1), ref)


def test_fuse_bn_folds_into_a_transposed_conv_along_its_axis_1():
    x = torch.randn(2, 4, 5, 5)
    kernel = torch.randn(4, 6, 4, 4)  # (in, out, kh, kw)
    mean, var = torch.randn(6), torch.rand(6) + 0.5
    gamma, beta = torch.randn(6), torch.randn(6)
    ref = F.batch_norm(F.conv_transpose2d(x, kernel, stride=2, padding=1),
                       mean, var, gamma, beta, eps=1e-5)
    k, b = T.fuse_bn(kernel, mean, var, gamma, beta, 1e-5, axis=1)
    assert_close_rel(F.conv_transpose2d(x, k, b, stride=2, padding=1), ref)


def test_bn_of_zero_is_bn_output_for_zero_input():
    mean, var = torch.randn(5), torch.rand(5) + 0.5
    gamma, beta = torch.randn(5), torch.randn(5)
    ref = F.batch_norm(
        torch.zeros(1, 5, 1, 1), mean, var, gamma, beta, eps=1e-3)
    got = T.bn_of_zero(mean, var, gamma, beta, 1e-3)
    assert_close_rel(got, ref.flatten())


def test_add_branches_sums_kernels_and_biases():
    kb = [(torch.randn(3, 2, 3, 3), torch.randn(3)) for _ in range(3)]
    k, b = T.add_branches(kb)
    x = torch.randn(1, 2, 6, 6)
    ref = sum(F.conv2d(x, ki, bi, padding=1) for ki, bi in kb)
    assert_close_rel(F.conv2d(x, k, b, padding=1), ref)


@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('stride', [1, 2])
def test_merge_1x1_kxk_group_safe(groups, stride):
    cin, mid, cout, K = 8, 8, 12, 3
    k1, b1 = torch.randn(mid, cin // groups, 1, 1), torch.randn(mid)
    k2, b2 = torch.randn(cout, mid // groups, K, K), torch.randn(cout)
    # Interior only (no padding): the bias of the 1x1 passes through the KxK.
    x = torch.randn(2, cin, 9, 9)
    ref = F.conv2d(
        F.conv2d(x, k1, b1, groups=groups), k2, b2, stride, groups=groups)
    k, b = T.merge_1x1_kxk(k1, b1, k2, b2, groups)
    assert k.shape == (cout, cin // groups, K, K)
    assert_close_rel(F.conv2d(x, k, b, stride, groups=groups), ref)


def test_merge_1x1_kxk_rejects_bad_groups():
    with pytest.raises(ValueError, match='divisible'):
        T.merge_1x1_kxk(
            torch.randn(6, 6, 1, 1), torch.randn(6), torch.randn(9, 2, 3, 3),
            torch.randn(9), groups=4)


@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('K', [3, 5])
def test_avg_pool_kernel_equals_avg_pool(groups, K):
    x = torch.randn(2, 8, 9, 9)
    k = T.avg_pool_kernel(8, K, groups)
    assert k.shape == (8, 8 // groups, K, K)
    assert_close_rel(
        F.conv2d(x, k, groups=groups, stride=2), F.avg_pool2d(x, K, 2))


@pytest.mark.parametrize('groups', [1, 2, 4])
@pytest.mark.parametrize('K', [1, 3, 5])
def test_identity_kernel_is_identity(groups, K):
    x = torch.randn(2, 8, 6, 6)
    k = T.identity_kernel(8, K, groups)
    assert_close_rel(F.conv2d(x, k, padding=K // 2, groups=groups), x)


@pytest.mark.parametrize('kh,kw', [(1, 1), (1, 5), (5, 1), (3, 3), (1, 3),
                                   (3, 1)])
def test_pad_to_kernel_size_centres_asymmetric_kernels(kh, kw):
    """1xK / Kx1 land on the middle row / column (DBB's helper swaps them)."""
    K = 5
    small = torch.randn(4, 3, kh, kw)
    x = torch.randn(2, 3, 8, 8)
    ref = F.conv2d(x, small, padding=(kh // 2, kw // 2))
    big = T.pad_to_kernel_size(small, K)
    assert big.shape == (4, 3, K, K)
    assert_close_rel(F.conv2d(x, big, padding=K // 2), ref)


def test_pad_to_kernel_size_rejects_uncentrable():
    with pytest.raises(ValueError, match='cannot centre'):
        T.pad_to_kernel_size(torch.randn(1, 1, 2, 3), 5)


def test_centre_crop_is_inverse_of_padding():
    kernel = torch.randn(4, 3, 5, 5)
    for kh, kw in [(1, 1), (1, 5), (5, 1), (3, 3)]:
        crop = T.centre_crop_kernel(kernel, kh, kw)
        assert crop.shape[-2:] == (kh, kw)
        padded = T.pad_to_kernel_size(crop, 5)
        # The crop sits where it came from.
        mask = padded != 0
        assert torch.equal(padded[mask], kernel[mask])
    assert torch.equal(
        T.centre_crop_kernel(kernel, 1, 5)[..., 0, :], kernel[..., 2, :])
    assert torch.equal(
        T.centre_crop_kernel(kernel, 5, 1)[..., :, 0], kernel[..., :, 2])
