"""Every metric against values computed by hand from DESIGN.md's formulas."""
import numpy as np
import pytest

from forgetlab.eval import metrics as M

# Rows: after training task i; columns: task j.
R3 = [[0.9, 0.1, 0.2],
      [0.6, 0.8, 0.3],
      [0.5, 0.7, 0.95]]


def test_average_accuracy_is_mean_of_last_row():
    assert M.average_accuracy(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_average_incremental_accuracy():
    # (1/3) * [0.9 + (0.6+0.8)/2 + (0.5+0.7+0.95)/3]
    expected = (0.9 + 0.7 + 2.15 / 3) / 3
    assert M.average_incremental_accuracy(R3) == pytest.approx(expected)


def test_learning_accuracy_is_mean_of_diagonal():
    assert M.learning_accuracy(R3) == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_bwt():
    # ((0.5-0.9) + (0.7-0.8)) / 2
    assert M.backward_transfer(R3) == pytest.approx(-0.25)


def test_fwt_against_baseline():
    b = [0.0, 0.05, 0.25]
    # ((R[0,1]-b1) + (R[1,2]-b2)) / 2 = ((0.1-0.05) + (0.3-0.25)) / 2
    assert M.forward_transfer(R3, b) == pytest.approx(0.05)
    assert M.forward_transfer(R3, None) is None


def test_forgetting_uses_max_over_earlier_rows():
    R = [[0.9, 0.0, 0.0],
         [0.7, 0.6, 0.0],
         [0.4, 0.8, 0.9]]
    # task 0: max(0.9, 0.7) - 0.4 = 0.5; task 1: max(0.0, 0.6) - 0.8 = -0.2 -> mean 0.15
    assert M.forgetting(R) == pytest.approx(0.15)


def test_forgetting_with_ties_in_the_max():
    R = [[0.8, 0.0],
         [0.8, 0.5]]
    assert M.forgetting(R) == pytest.approx(0.0)
    assert M.backward_transfer(R) == pytest.approx(0.0)


def test_intransigence_against_joint_reference():
    ref = [0.95, 0.9, 0.97]
    # ((0.95-0.9) + (0.9-0.8) + (0.97-0.95)) / 3
    assert M.intransigence(R3, ref) == pytest.approx(0.17 / 3)
    assert M.intransigence(R3, None) is None


def test_single_task_gives_none_not_nan():
    m = M.all_metrics([[0.75]], b=[0.1])
    assert m["acc"] == 0.75 and m["avg_incremental_acc"] == 0.75 and m["learning_acc"] == 0.75
    assert m["bwt"] is None and m["fwt"] is None and m["forgetting"] is None and m["intransigence"] is None


def test_all_metrics_keys_match_results_contract():
    assert set(M.all_metrics(R3, [0, 0, 0])) == {"acc", "avg_incremental_acc", "bwt", "fwt", "forgetting",
                                                  "intransigence", "learning_acc"}


def test_non_square_matrix_is_rejected():
    with pytest.raises(ValueError):
        M.average_accuracy(np.zeros((2, 3)))
