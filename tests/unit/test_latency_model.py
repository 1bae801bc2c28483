from gateway.latency_model import LatencyModel


def test_recovers_a_linear_cost() -> None:
    model = LatencyModel()
    for rows in [1, 4, 8, 16, 32, 2, 64] * 5:
        model.observe(rows, 0.002 + 0.0001 * rows)
    assert abs(model.fixed_s - 0.002) < 1e-6
    assert abs(model.per_row_s - 0.0001) < 1e-8
    assert abs(model.predict(10) - 0.003) < 1e-6


def test_one_batch_size_only_is_attributed_per_row() -> None:
    model = LatencyModel()
    model.observe(8, 0.008)
    assert abs(model.predict(8) - 0.008) < 1e-9


def test_forgets_old_behaviour() -> None:
    model = LatencyModel(decay=0.9)
    for rows in [1, 8, 16] * 20:
        model.observe(rows, 0.001 * rows)
    for rows in [1, 8, 16] * 40:
        model.observe(rows, 0.002 * rows)
    assert abs(model.per_row_s - 0.002) < 1e-4
