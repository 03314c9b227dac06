from __future__ import annotations

from agents.runtime import _split_on_stop, common_prefix_length


def test_text_before_a_stop_sequence_is_sent_and_generation_stops() -> None:
    assert _split_on_stop("Hello\nUser:", ["User:"]) == ("Hello\n", "", True)


def test_a_possible_start_of_a_stop_sequence_is_held_back() -> None:
    assert _split_on_stop("Hello Us", ["User:"]) == ("Hello ", "Us", False)
    assert _split_on_stop("Hello", ["User:"]) == ("Hello", "", False)


def test_no_stop_sequences_sends_everything() -> None:
    assert _split_on_stop("anything", []) == ("anything", "", False)


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
