"""Timers and reminders (issue 12): the service on a fake clock, its tools, persistence, DST, clock jumps."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from device.events import EventBus
from device.timers.clock import SystemClock
from device.timers.model import TimerEvent
from device.timers.parse import (
    format_duration,
    parse_duration,
    parse_signed_duration,
    parse_time_of_day,
)
from device.timers.service import TimerService
from device.timers.store import TimerStore
from device.timers.tools import timer_tools
from device.tools.registry import ToolRegistry
from tests.timer_fakes import FakeClock, FakeRinger

pytestmark = pytest.mark.timeout(30)

BERLIN = ZoneInfo("Europe/Berlin")


class Rig:
    """A service on a fake clock, its tools in a registry, and what it published."""

    def __init__(self, state_dir: Path, clock: FakeClock, zone: ZoneInfo = BERLIN, grace: float = 600.0) -> None:
        self.clock = clock
        self.ringer = FakeRinger()
        self.bus = EventBus()
        self.events: list[TimerEvent] = []
        self.bus.subscribe(self.events.append, TimerEvent)
        self.service = TimerService(store=TimerStore(state_dir), bus=self.bus, ringer=self.ringer, zone=zone,
                                    missed_grace_s=grace, clock=clock)
        self.tools = ToolRegistry()
        for tool in timer_tools(self.service):
            self.tools.add(tool)

    async def call(self, name: str, **args: object) -> dict:
        result = await self.tools.call(name, json.dumps(args), 1.0)
        return result.output

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.service.tick()

    def kinds(self) -> list[str]:
        return [e.event_type for e in self.events]


@pytest.fixture
async def rig(tmp_path: Path):
    r = Rig(tmp_path / "state", FakeClock(datetime(2026, 11, 27, 18, 32, 0, tzinfo=BERLIN)))
    await r.service.start()
    yield r
    await r.service.stop()


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("value, seconds", [
    (600, 600), (1, 1), ("90", 90), ("10m", 600), ("1h30m", 5400), ("1 hour 30 minutes", 5400),
    ("1.5 h", 5400), ("PT10M", 600), ("pt1h2m3s", 3723), ("90 seconds", 90), ("2 minutes and 5 seconds", 125),
    ("24h", 86400), ("P1D", 86400),
])
def test_durations_people_and_models_say(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value, message", [
    (-5, "negative"), ("-10m", "negative"), (0, "at least 1 second"), ("0s", "at least 1 second"),
    (0.4, "at least 1 second"), ("30h", "30 hours is longer than the 24-hour limit"), (86401, "24-hour limit"),
    ("ten minutes", "cannot read the duration"), ("10 parsecs", "unknown unit 'parsecs'"), (True, "duration must be"),
    (None, "duration must be"), ("", "empty"), (float("nan"), "finite"), ("10m tomorrow", "cannot read"),
])
def test_nonsense_durations_are_refused_with_the_reason(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


def test_signed_deltas_and_spoken_durations() -> None:
    assert parse_signed_duration("-2m") == -120 and parse_signed_duration("+5 minutes") == 300
    assert format_duration(5400) == "1 hour 30 minutes" and format_duration(61) == "1 minute 1 second"
    assert format_duration(600, adjective=True) == "10 minute"


@pytest.mark.parametrize("value, expected", [
    ("7", "2026-11-28 07:00"), ("at 7", "2026-11-28 07:00"), ("07:00", "2026-11-28 07:00"),
    ("7:30 pm", "2026-11-27 19:30"), ("19:15", "2026-11-27 19:15"), ("12 am", "2026-11-28 00:00"),
    ("noon", "2026-11-28 12:00"), ("18:32", "2026-11-28 18:32"), ("2026-11-30T08:15", "2026-11-30 08:15"),
    ("2026-11-30T08:15:00+00:00", "2026-11-30 09:15"),
])
def test_times_of_day_are_the_next_such_moment_in_the_device_zone(value: str, expected: str) -> None:
    now = datetime(2026, 11, 27, 18, 32, 0, tzinfo=BERLIN)
    assert f"{parse_time_of_day(value, now, BERLIN):%Y-%m-%d %H:%M}" == expected


@pytest.mark.parametrize("value, message", [
    ("25:00", "not a time of day"), ("13 pm", "1-12"), ("soon", "cannot read the time"),
    ("2026-11-01T07:00", "in the past"), ("2026-13-01T07:00", "cannot read the date-time"), ("", "time of day"),
])
def test_bad_times_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time_of_day(value, datetime(2026, 11, 27, 18, 32, tzinfo=BERLIN), BERLIN)


# ------------------------------------------------------------------ tools and the countdown


async def test_set_timer_answers_what_was_set_and_rings_at_its_end(rig: Rig) -> None:
    out = await rig.call("set_timer", duration="10m", label="pasta")
    assert out["ok"] and out["summary"] == "pasta timer: 10 minutes, ends at 18:42", out
    rig.advance(599.9)
    assert rig.ringer.rings == []
    rig.advance(0.1)
    (ring_id, kind, text), = rig.ringer.rings
    assert (kind, text) == ("timer", "The pasta timer is done.")
    assert rig.kinds() == ["timer_set", "timer_finished"]
    assert rig.events[-1].item["id"] == ring_id and rig.service.entries() == []
    rig.advance(3600)
    assert len(rig.ringer.rings) == 1, "a timer rings once"


async def test_an_unlabelled_timer_is_named_by_its_length(rig: Rig) -> None:
    out = await rig.call("set_timer", duration=90)
    assert out["summary"] == "1 minute 30 seconds, ends at 18:33"
    rig.advance(90)
    assert rig.ringer.rings[0][2] == "The 1 minute 30 second timer is done."


async def test_bad_tool_arguments_get_clear_errors_and_set_nothing(rig: Rig) -> None:
    cases = [
        ({"duration": -5}, "negative"), ({"duration": 0}, "at least 1 second"),
        ({"duration": "30h"}, "24-hour limit"), ({}, "give the duration"),
        ({"duration": "10m", "colour": "red"}, "unknown argument 'colour'"),
        ({"duration": "10m", "label": 7}, "label must be text"),
    ]
    for args, message in cases:
        out = await rig.call("set_timer", **args)
        assert out["ok"] is False and message in out["error"], (args, out)
    assert rig.service.entries() == [] and rig.events == []
    await rig.call("set_timer", duration="5m", label="eggs")
    out = await rig.call("set_timer", duration="8m", label="Eggs timer")
    assert not out["ok"] and "already running" in out["error"]
    for name, args, message in [
        ("cancel_timer", {"label": "pasta"}, "no timer or reminder called 'pasta'; running: eggs timer"),
        ("adjust_timer", {"label": "eggs"}, "give delta"),
        ("adjust_timer", {"label": "eggs", "delta": "-6m"}, "cancel it instead"),
        ("adjust_timer", {"label": "eggs", "delta": "+24h"}, "24-hour limit"),
        ("set_reminder", {"at": "7"}, "give both"),
        ("set_reminder", {"at": "soon", "text": "bins"}, "cannot read the time"),
        ("set_reminder", {"at": "7", "text": "  "}, "needs the text"),
    ]:
        out = await rig.call(name, **args)
        assert out["ok"] is False and message in out["error"], (name, args, out)


async def test_twenty_timers_at_once_each_ring_once_in_order(rig: Rig) -> None:
    for i in range(20):
        out = await rig.call("set_timer", duration=60 * (20 - i), label=f"t{i}")
        assert out["ok"], out
    listed = await rig.call("list_timers")
    assert listed["count"] == 20 and listed["timers"][0]["label"] == "t19" and listed["timers"][0]["remaining"] == "1 minute"
    for minute in range(1, 21):
        rig.advance(60)
        assert len(rig.ringer.rings) == minute
    assert [text for _, _, text in rig.ringer.rings] == [f"The t{19 - i} timer is done." for i in range(20)]
    assert rig.service.entries() == []


async def test_adjust_cancel_and_ambiguity(rig: Rig) -> None:
    await rig.call("set_timer", duration="10m", label="pasta")
    out = await rig.call("adjust_timer", delta="+5m")
    assert out["ok"] and out["timer"]["remaining"] == "15 minutes" and out["timer"]["ends_at"] == "18:47"
    assert out["summary"] == "pasta timer: 15 minutes left, ends at 18:47"
    await rig.call("set_timer", duration="4m", label="egg whites")
    await rig.call("set_timer", duration="3m", label="eggs")
    out = await rig.call("adjust_timer", delta="-1m")
    assert not out["ok"] and "there are 3 timers" in out["error"] and "pasta timer" in out["error"]
    out = await rig.call("adjust_timer", label="egg", delta="-1m")
    assert not out["ok"] and "could mean" in out["error"]
    out = await rig.call("adjust_timer", label="EGGS", delta=-60)
    assert out["ok"] and out["timer"]["remaining"] == "2 minutes"
    out = await rig.call("cancel_timer", label="white")
    assert out["cancelled"] == ["egg whites timer"] and out["left"] == 2
    rig.advance(120)
    assert [r[2] for r in rig.ringer.rings] == ["The eggs timer is done."]
    await rig.call("set_reminder", at="7", text="put the bins out")
    out = await rig.call("cancel_timer", all=True)
    assert out["cancelled"] == ["pasta timer"] and out["left"] == 1, "reminders stay when all timers go"
    out = await rig.call("cancel_timer", label="bins")
    assert out["cancelled"] == ["reminder: put the bins out"] and out["left"] == 0
    rig.advance(24 * 3600)
    assert len(rig.ringer.rings) == 1
    assert rig.kinds().count("timer_cancelled") == 3


async def test_reminder_rings_at_the_time_of_day_with_its_text(rig: Rig) -> None:
    out = await rig.call("set_reminder", at="7", text="put the bins out")
    assert out["ok"] and out["reminder"]["ends_at"] == "tomorrow at 07:00", out
    assert out["summary"] == "reminder tomorrow at 07:00: put the bins out"
    out = await rig.call("set_reminder", at="2026-11-30T08:15", text="dentist")
    assert out["summary"] == "reminder on Mon 30 Nov at 08:15: dentist"
    await rig.call("cancel_timer", label="dentist")
    rig.advance(12 * 3600 + 28 * 60 - 1)  # 18:32 -> 06:59:59
    assert rig.ringer.rings == []
    rig.advance(1)
    assert rig.ringer.rings[0][1:] == ("reminder", "Reminder: put the bins out")
    assert rig.kinds()[-1] == "reminder_due"


# ------------------------------------------------------------------ durable


async def test_restart_restores_timers_by_their_wall_clock_end(tmp_path: Path) -> None:
    state = tmp_path / "state"
    clock = FakeClock(datetime(2026, 11, 27, 18, 32, 0, tzinfo=BERLIN), mono=5000.0)
    first = Rig(state, clock)
    await first.service.start()
    await first.call("set_timer", duration="10m", label="pasta")
    await first.call("set_timer", duration="1h", label="roast")
    await first.call("set_timer", duration="20m", label="bread")
    await first.call("set_reminder", at="19:00", text="call grandma")
    await first.service.stop()
    saved = json.loads((state / "timers.json").read_text())
    assert [i["label"] for i in saved["items"]] == ["pasta", "bread", None, "roast"]

    # Down for 3 minutes; the machine rebooted, so the monotonic clock starts again near 0.
    clock2 = FakeClock(clock.wall + 180, mono=12.0)
    second = Rig(state, clock2)
    await second.service.start()
    listed = {t.get("label") or t.get("text"): t for t in (await second.call("list_timers"))["timers"]}
    assert listed["pasta"]["remaining"] == "7 minutes" and listed["pasta"]["ends_at"] == "18:42"
    assert listed["call grandma"]["ends_at"] == "19:00"
    second.advance(7 * 60 - 0.5)
    assert second.ringer.rings == []
    second.advance(0.5)
    assert [r[2] for r in second.ringer.rings] == ["The pasta timer is done."]
    await second.service.stop()

    # Down again from 18:42 to 19:01: bread ended 9 min ago (< the 10 min grace: rings once at start,
    # saying so), the reminder was due 1 min ago (rings); the roast (19:32) is still pending.
    clock3 = FakeClock(clock2.wall + 19 * 60, mono=7.0)
    third = Rig(state, clock3)
    await third.service.start()
    texts = [r[2] for r in third.ringer.rings]
    assert texts == ["The bread timer ended 9 minutes ago.", "Reminder: call grandma (this was due 1 minute ago)"], texts
    assert [e.label for e in third.service.entries()] == ["roast"]
    await third.service.stop()

    # Down for 2 hours: the roast ended 1 h 29 min ago, beyond the grace period: missed, not rung.
    fourth = Rig(state, FakeClock(clock3.wall + 2 * 3600, mono=3.0))
    await fourth.service.start()
    assert fourth.ringer.rings == []
    assert fourth.kinds() == ["timer_missed"]
    assert fourth.events[0].item["label"] == "roast" and fourth.events[0].item["late_s"] == 89 * 60
    assert fourth.service.entries() == []
    assert json.loads((state / "timers.json").read_text())["items"] == []
    await fourth.service.stop()


async def test_a_corrupt_timers_file_is_kept_and_the_speaker_starts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "timers.json").write_text('{"items": [ {"id": "a", ')
    r = Rig(state, FakeClock(1.8e9))
    await r.service.start()
    assert r.service.entries() == []
    assert (state / "timers.json.bad").read_text().startswith('{"items"')
    assert "corrupt" in caplog.text and "timers.json.bad" in caplog.text
    (state / "timers.json").write_text(json.dumps({"items": [
        {"id": "x", "kind": "timer", "label": "ok", "text": "", "duration_s": 60, "set_at": 1.8e9, "ends_at": 1.8e9 + 60},
        {"id": "y", "kind": "alarm", "label": "bad", "text": "", "duration_s": 60, "set_at": 1.8e9, "ends_at": 1.8e9 + 60},
    ]}))
    r2 = Rig(state, FakeClock(1.8e9))
    await r2.service.start()
    assert [e.label for e in r2.service.entries()] == ["ok"]
    assert "item 1 skipped: 'kind' must be 'timer' or 'reminder'" in caplog.text


# ------------------------------------------------------------------ clocks: DST and jumps


async def test_dst_end_in_berlin_reminders_keep_wall_time_timers_keep_length(tmp_path: Path) -> None:
    # 2026-10-25 03:00 CEST the clocks go back to 02:00 CET: that night has 25 hours.
    r = Rig(tmp_path / "state", FakeClock(datetime(2026, 10, 24, 22, 0, tzinfo=BERLIN)))
    await r.service.start()
    out = await r.call("set_reminder", at="7:00", text="bins")
    assert out["reminder"]["ends_at"] == "tomorrow at 07:00"
    out = await r.call("set_timer", duration="6h", label="dough")
    assert out["summary"] == "dough timer: 6 hours, ends tomorrow at 03:00"  # 22:00 CEST + 6 h = 03:00 CET
    r.advance(6 * 3600)
    assert [x[2] for x in r.ringer.rings] == ["The dough timer is done."]
    r.advance(3 * 3600 + 3599)  # 06:59:59 CET: nine hours on the wall clock, ten real ones, minus a second
    assert len(r.ringer.rings) == 1
    r.advance(1)
    assert r.ringer.rings[-1][2] == "Reminder: bins"
    assert datetime.fromtimestamp(r.clock.time(), BERLIN).strftime("%H:%M %Z") == "07:00 CET"
    await r.service.stop()


async def test_dst_start_a_time_in_the_gap_rings_an_hour_later_on_the_clock(tmp_path: Path) -> None:
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that night.
    r = Rig(tmp_path / "state", FakeClock(datetime(2026, 3, 29, 1, 0, tzinfo=BERLIN)))
    await r.service.start()
    out = await r.call("set_reminder", at="2:30", text="check the oven")
    assert out["reminder"]["ends_at"] == "03:30"
    r.advance(90 * 60 - 1)  # 01:00 CET -> 03:30 CEST is 90 minutes
    assert r.ringer.rings == []
    r.advance(1)
    assert r.ringer.rings and datetime.fromtimestamp(r.clock.time(), BERLIN).strftime("%H:%M") == "03:30"
    await r.service.stop()


async def test_a_wall_clock_step_neither_fires_timers_early_nor_loses_them(rig: Rig) -> None:
    await rig.call("set_timer", duration="10m", label="pasta")
    await rig.call("set_reminder", at="19:00", text="call grandma")
    rig.clock.step_wall(3600)  # NTP sets the clock an hour forward
    rig.service.tick()
    assert [r[2] for r in rig.ringer.rings] == ["Reminder: call grandma (this was due 32 minutes ago)"]
    listed = (await rig.call("list_timers"))["timers"]
    assert listed[0]["remaining"] == "10 minutes" and listed[0]["ends_at"] == "19:42", "wall end re-derived"
    assert json.loads((rig.service.store.path).read_text())["items"][0]["ends_at"] == pytest.approx(rig.clock.time() + 600)
    rig.clock.step_wall(-2 * 3600)  # and two hours back
    rig.advance(599)
    assert len(rig.ringer.rings) == 1
    rig.advance(1)
    assert rig.ringer.rings[-1][2] == "The pasta timer is done."


async def test_restored_timers_follow_the_wall_clock_when_it_is_corrected_after_boot(tmp_path: Path) -> None:
    state = tmp_path / "state"
    clock = FakeClock(datetime(2026, 11, 27, 18, 32, tzinfo=BERLIN), mono=100.0)
    first = Rig(state, clock)
    await first.service.start()
    await first.call("set_timer", duration="30m", label="roast")
    await first.service.stop()
    # Rebooted 5 minutes later, but before NTP the clock says an hour earlier (fake-hwclock).
    boot = FakeClock(clock.wall + 300 - 3600, mono=5.0)
    second = Rig(state, boot)
    await second.service.start()
    boot.advance(10)
    boot.step_wall(3600)  # NTP sync
    second.service.tick()
    assert second.service.remaining(second.service.entries()[0]) == pytest.approx(30 * 60 - 310)
    second.advance(30 * 60 - 311)
    assert second.ringer.rings == []
    second.advance(1)
    assert second.ringer.rings[0][2] == "The roast timer is done."
    await second.service.stop()


# ------------------------------------------------------------------ real scheduling


async def test_the_loop_rings_on_time_without_polling(tmp_path: Path) -> None:
    ringer = FakeRinger()
    rang: list[float] = []
    ringer.ring = lambda *a: rang.append(time.monotonic())  # type: ignore[method-assign]
    service = TimerService(store=TimerStore(tmp_path), bus=EventBus(), ringer=ringer, zone=BERLIN, clock=SystemClock())
    await service.start()
    start = time.monotonic()
    service.set_timer(1.0, "quick")
    service.set_timer(1.5, "second")
    handle = service._handle
    assert handle is not None and handle.when() - start == pytest.approx(1.0, abs=0.05), "one wake-up at the next deadline"
    await asyncio.sleep(1.7)
    assert len(rang) == 2
    assert abs(rang[0] - start - 1.0) < 0.05 and abs(rang[1] - start - 1.5) < 0.05, [r - start for r in rang]
    await service.stop()
