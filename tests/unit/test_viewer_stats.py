"""The viewer's statistics against values computed by hand or published."""

import pytest

from daydream.viewer.stats import difference_ci, krippendorff_alpha, mean_ci, ranks, spearman, spearman_ci

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 coders, 12 units.
K = None
KRIPPENDORFF_2011: list[list[float | None]] = [
    [1, 1, K, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
    [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [K, 5, 5, 5], [K, K, 1, 1], [K, 3, K, K],
]


def test_alpha_matches_krippendorffs_worked_example() -> None:
    assert krippendorff_alpha(KRIPPENDORFF_2011, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(KRIPPENDORFF_2011, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(KRIPPENDORFF_2011, "interval") == pytest.approx(0.849, abs=5e-4)


def test_alpha_is_one_for_perfect_agreement_and_none_without_pairable_units() -> None:
    assert krippendorff_alpha([[1, 1], [3, 3], [5, 5]]) == pytest.approx(1.0)
    assert krippendorff_alpha([[1, None], [None, 2]]) is None


def test_ranks_average_ties() -> None:
    assert ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]


def test_spearman_against_a_hand_computed_case() -> None:
    # ranks x: 1 2 3 4 5; ranks y: 2 1 4 3 5; sum d^2 = 4; rho = 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [5, 4, 7, 6, 9]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [4, 4, 4]) is None


def test_spearman_interval_contains_rho_and_is_reproducible() -> None:
    x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    y = [2, 1, 4, 3, 6, 5, 8, 7, 10, 9]
    estimate = spearman_ci(x, y)
    assert estimate.value is not None and estimate.low is not None and estimate.high is not None
    assert estimate.low <= estimate.value <= estimate.high
    assert spearman_ci(x, y) == estimate


def test_mean_and_difference_intervals() -> None:
    estimate = mean_ci([4, 6])
    assert estimate.value == 5 and estimate.n == 2
    assert estimate.high is not None
    # stdev of [4, 6] = sqrt(2); half width = 1.96 * sqrt(2)/sqrt(2)
    assert estimate.high - estimate.value == pytest.approx(1.959964, rel=1e-5)
    diff = difference_ci([4, 6], [7, 9])
    assert diff.value == 3
    assert diff.low is not None and diff.high is not None
    assert diff.low < 3 < diff.high


def test_large_samples_get_a_fisher_interval_around_rho() -> None:
    x = list(range(300))
    y = [v + (7 if v % 2 else -7) for v in x]
    estimate = spearman_ci(x, y)
    assert estimate.value is not None and estimate.low is not None and estimate.high is not None
    assert estimate.low < estimate.value < estimate.high < 1
