"""A study's wall time adds up over the calls that worked on it, interrupted ones included."""

import pytest

from isotpp.errors import UserError
from isotpp.studies import clock as clock_mod
from isotpp.studies.clock import StudyClock


@pytest.fixture
def now(monkeypatch):
    t = [1000.0]
    monkeypatch.setattr(clock_mod.time, "time", lambda: t[0])
    return t


def test_total_accumulates_over_calls_up_to_the_last_tick(tmp_path, now):
    first = StudyClock(tmp_path)
    now[0] += 10
    assert first.tick() == 10
    now[0] += 3
    assert first.tick() == 13
    now[0] += 100  # then the call dies: these 100 s did not finish any work and are not counted
    second = StudyClock(tmp_path)  # the resumed call starts from the saved total
    assert second.total_s == 13
    now[0] += 5
    assert second.tick() == 18 and second.invocation_s == 5
    assert StudyClock(tmp_path).total_s == 18


def test_a_corrupt_record_is_a_clear_error(tmp_path, now):
    (tmp_path / "wall.json").write_text("{not json")
    with pytest.raises(UserError, match="wall.json"):
        StudyClock(tmp_path)
    (tmp_path / "wall.json").write_text('{"wall_s": "soon"}')
    with pytest.raises(UserError, match="holds no wall time"):
        StudyClock(tmp_path)
