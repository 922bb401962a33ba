"""The stepping rule: which N are tried, where stepping stops, what the capacity is."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from benchmarks.capacity import (
    MAX_N_LIMIT,
    Capacity,
    check_ns,
    check_step_duration,
    step_ns,
    sweep,
)
from benchmarks.progress import LogReporter
from benchmarks.streams import StreamRun
from tests.benchmarks.conftest import made_run


def test_steps_double_to_eight_then_grow_by_four_up_to_the_bound() -> None:
    assert step_ns(32) == [1, 2, 4, 8, 12, 16, 20, 24, 28, 32]
    assert step_ns(10) == [1, 2, 4, 8, 10]  # the bound itself is always tried
    assert step_ns(3) == [1, 2, 3]
    assert step_ns(1) == [1]
    for bad in (0, MAX_N_LIMIT + 1):
        with pytest.raises(ValueError, match="largest client count"):
            step_ns(bad)


def test_hand_picked_counts_and_durations_are_bounded() -> None:
    assert check_ns([8, 1, 8, 4]) == [1, 4, 8]
    for bad in ([], [0, 2], [MAX_N_LIMIT + 1]):
        with pytest.raises(ValueError, match="client counts"):
            check_ns(bad)
    assert check_step_duration(20.0) == 20.0
    with pytest.raises(ValueError, match="step's audio"):
        check_step_duration(0.5)
    with pytest.raises(ValueError, match="step's audio"):
        check_step_duration(3600.0)


def machine_with_capacity(real_time_up_to: int) -> tuple[list[int], Callable[[int], StreamRun]]:
    """A fake server whose p95 lag passes 300 ms above ``real_time_up_to`` clients."""
    tried: list[int] = []

    def run_step(n: int) -> StreamRun:
        tried.append(n)
        return made_run(n, 0.1 if n <= real_time_up_to else 0.6)

    return tried, run_step


def test_stepping_stops_at_the_first_step_that_misses_real_time() -> None:
    tried, run_step = machine_with_capacity(10)
    runs = sweep(step_ns(32), run_step, LogReporter())
    assert tried == [1, 2, 4, 8, 12]  # 12 broke real time: 16 and up are never tried
    capacity = Capacity(step_ns(32), runs, 20.0)
    assert capacity.largest == 8 and capacity.broke
    assert capacity.describe() == "8"
    assert capacity.soak_clients() == 6  # 75 % of 8


def test_a_machine_that_never_breaks_reports_a_lower_bound() -> None:
    tried, run_step = machine_with_capacity(100)
    capacity = Capacity(step_ns(16), sweep(step_ns(16), run_step), 20.0)
    assert tried == [1, 2, 4, 8, 12, 16]
    assert not capacity.broke and capacity.largest == 16
    assert capacity.describe() == "at least 16 (the largest N tried)"
    assert capacity.soak_clients() == 12


def test_no_capacity_still_soaks_one_client() -> None:
    tried, run_step = machine_with_capacity(0)
    capacity = Capacity([1, 2], sweep([1, 2], run_step), 20.0)
    assert tried == [1]
    assert capacity.largest is None and capacity.describe().startswith("none")
    assert capacity.soak_clients() == 1
    # 75 % rounds down: 3 clients of capacity give 2.
    assert Capacity([3], [made_run(1, 0.1), made_run(3, 0.1)], 20.0).soak_clients() == 2
