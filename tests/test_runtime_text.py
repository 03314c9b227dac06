from __future__ import annotations

from agents.slots import common_prefix_length, split_on_stop


def test_text_before_a_stop_sequence_is_sent_and_generation_stops() -> None:
    assert split_on_stop("Hello\nUser:", ["User:"]) == ("Hello\n", "", True)


def test_a_possible_start_of_a_stop_sequence_is_held_back() -> None:
    assert split_on_stop("Hello Us", ["User:"]) == ("Hello ", "Us", False)
    assert split_on_stop("Hello", ["User:"]) == ("Hello", "", False)


def test_no_stop_sequences_sends_everything() -> None:
    assert split_on_stop("anything", []) == ("anything", "", False)


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
