"""The flags derived from an experiment's Config: every command's --help reads cleanly."""

from __future__ import annotations

import re

import pytest

from infdepth.cli import build_parser

COMMANDS = [["xor"], ["images"], ["study"], ["ode", "params"], ["ode", "spiral"], ["ode", "memory"],
            ["limits", "convergence"], ["limits", "inference"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_flag_states_its_default_once_and_never_as_none(command: list[str]) -> None:
    parser = build_parser()
    sub = parser
    for word in command:  # walk down to the subcommand's own parser
        action = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction")
        sub = action.choices[word]
    text = re.sub(r"\s+", " ", sub.format_help())
    assert "(default: None)" not in text
    for option in sub._actions:
        if option.help and option.option_strings:  # "(default: X)" appended to a worded default
            worded = option.help.replace("%(default)s", "X")
            assert len(re.findall(r"\(default|default:", worded)) <= 1, option.help


@pytest.mark.parametrize("processes", [1, 2])
def test_parallel_imap_returns_every_result_once(processes: int) -> None:
    from infdepth.experiments._common import parallel_imap

    assert sorted(parallel_imap(abs, [-3, 1, -2, 5], processes)) == [1, 2, 3, 5]
    assert list(parallel_imap(abs, [], processes)) == []
