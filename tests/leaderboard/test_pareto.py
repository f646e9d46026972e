"""The non-dominated frontier on hand-built points."""

from leaderboard.pareto import pareto_frontier


def pts(*triples):
    return [{"id": i, "x": x, "y": y} for i, x, y in triples]


def test_frontier_in_increasing_compute():
    points = pts((1, 10, 0.5), (2, 5, 0.3), (3, 20, 0.7), (4, 15, 0.4), (5, 1, 0.1))
    # 4 is dominated by 1 (less compute, higher score).
    assert pareto_frontier(points) == [5, 2, 1, 3]


def test_equal_x_keeps_only_the_best_score():
    assert pareto_frontier(pts((1, 10, 0.5), (2, 10, 0.6), (3, 20, 0.6))) == [2]


def test_equal_y_keeps_only_the_least_compute():
    assert pareto_frontier(pts((1, 10, 0.5), (2, 5, 0.5))) == [2]


def test_exact_duplicates_are_all_on_the_frontier():
    assert pareto_frontier(pts((3, 10, 0.5), (1, 10, 0.5), (2, 20, 0.9))) == [1, 3, 2]


def test_missing_and_non_finite_points_are_left_out_and_empty_is_fine():
    points = pts((1, None, 0.9), (2, 10, float("nan")), (3, 10, 0.2))
    assert pareto_frontier(points) == [3]
    assert pareto_frontier([]) == []
