"""Fuzzed tool arguments against the real broker and simulated devices: random types, missing
fields, unknown actions, topic-like names. No call may raise or hang, every answer is a JSON
object with ok/error, and nothing is ever published outside the devices' command topics (checked
at the source and by a wildcard subscriber on the broker)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device.tools.home import ACTIONS, Expect, Plan
from tests.rig.broker import BrokerSpy, DeviceSimulator, HomeRig, Mosquitto, add_standard_devices

pytestmark = pytest.mark.timeout(120)

NAMES = ["Kitchen light", "living room lamp", "COFFEE MACHINE", "Living room blinds", "Garage door", "Front door",
         "Hallway thermostat", "Heater plug"]
TOPICS = ["#", "+/set", "../x", "zigbee2mqtt/Kitchen light/set", "home/#", "$SYS/broker", "speaker/kitchen/availability",
          "homeassistant/light/x/config", "", " ", "\x00", "home/hall/frontdoor/set", "a/+/b", "/", "Kitchen light/#"]


class LoopThread:
    """An event loop in a thread, so hypothesis (synchronous) can drive the async rig."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class FuzzRig:
    def __init__(self, tmp: Any) -> None:
        self.broker = Mosquitto(tmp)
        self.broker.start()
        self.spy = BrokerSpy(self.broker)
        self.spy.start()
        self.sim = DeviceSimulator(self.broker)
        self.sim.start()
        self.devices = add_standard_devices(self.sim)
        self.lt = LoopThread()
        self.rig = HomeRig(self.broker, command_timeout_s=0.2)
        self.lt.run(self.rig.__aenter__())
        self.lt.run(self.rig.wait_devices(*NAMES))

    def call(self, name: str, raw: str) -> dict[str, Any]:
        return self.lt.run(self.rig.call(name, raw=raw, timeout_s=5.0))

    def close(self) -> None:
        try:
            self.lt.run(self.rig.__aexit__(None, None, None))
        finally:
            self.lt.close()
            self.sim.stop()
            self.spy.stop()
            self.broker.stop()


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRig]:
    rig = FuzzRig(tmp_path_factory.mktemp("fuzzbroker"))
    try:
        yield rig
    finally:
        rig.close()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20))
anything = st.recursive(json_scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
                        max_leaves=6)
numbers = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["40", "40%", "abc", "1e999", "nan"]),
                    st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
device_names = st.one_of(st.sampled_from(NAMES + TOPICS), st.text(max_size=30), anything)
actions = st.one_of(st.sampled_from([*ACTIONS, "explode", "publish", "TURN_ON", "#", "set_topic"]), anything)
_noise = {
    "device": device_names,
    "action": actions,
    "brightness": numbers,
    "position": numbers,
    "temperature": numbers,
    "color": st.one_of(st.sampled_from(["red", "#12ab34", "#zzzzzz", "warm white", "Blue", "#"]), anything),
    "confirmed": st.one_of(st.booleans(), anything),
    "topic": st.sampled_from(TOPICS),
    "command_topic": st.sampled_from(TOPICS),
    "payload": anything,
}
GOOD = [
    {"device": "Kitchen light", "action": "turn_on", "brightness": 50, "color": "red"},
    {"device": "living room lamp", "action": "set", "brightness": 20},
    {"device": "coffee machine", "action": "toggle"},
    {"device": "Living room blinds", "action": "set", "position": 40},
    {"device": "Living room blinds", "action": "stop"},
    {"device": "Garage door", "action": "close", "confirmed": True},
    {"device": "Front door", "action": "lock", "confirmed": True},
    {"device": "Hallway thermostat", "action": "set", "temperature": 21},
    {"device": "Hallway thermostat", "action": "turn_on"},
]
# Wild; a real device and action with odd extras; well-formed requests with topic-like extras.
args_strategy = st.one_of(
    st.builds(lambda good, extra: {**good, **extra}, st.sampled_from(GOOD),
              st.fixed_dictionaries({}, optional={k: _noise[k] for k in ("topic", "command_topic", "payload")})),
    st.fixed_dictionaries({}, optional={"device": device_names, "action": actions, **_noise}),
    st.fixed_dictionaries({"device": st.sampled_from(NAMES), "action": st.sampled_from(ACTIONS)},
                          optional={k: v for k, v in _noise.items() if k not in ("device", "action")}),
)
tool_names = st.sampled_from(["control_device", "control_device", "control_device", "get_device_state", "list_devices",
                              "publish", "#"])


def check_output(out: Any) -> None:
    assert isinstance(out, dict) and isinstance(out.get("ok"), bool), out
    if not out["ok"]:
        assert isinstance(out.get("error"), str) and out["error"], out
    json.dumps(out)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(name=tool_names, args=args_strategy)
def test_fuzzed_arguments(fuzz: FuzzRig, name: str, args: dict[str, Any]) -> None:
    check_output(fuzz.call(name, json.dumps(args)))


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(st.text(max_size=40), st.sampled_from(['[]', '"x"', '1', 'null', '{"device": ', '{"device": "#", "action": "turn_on"}',
                                                             '{"device": "Front door", "action": "unlock", "confirmed": "yes"}'])))
def test_fuzzed_raw_argument_strings(fuzz: FuzzRig, raw: str) -> None:
    check_output(fuzz.call("control_device", raw))


def test_zz_nothing_published_outside_device_command_topics(fuzz: FuzzRig) -> None:
    """Runs after the fuzzing above (file order): the whole session's publishes are checked."""
    if not fuzz.rig.published:  # (the fuzzing ran in another worker, or not yet: fuzz here first)
        test_fuzzed_arguments(fuzz)
        test_fuzzed_raw_argument_strings(fuzz)
    commands = set(fuzz.sim.command_topics())
    assert commands == set(fuzz.rig.home.registry.command_topics())
    ours = {t for t, _ in fuzz.rig.published}
    assert len(ours) >= 5, f"the fuzzing hardly reached a device ({ours}): the test would prove little"
    print(f"fuzz: {len(fuzz.rig.published)} publishes to {len(ours)} topics")
    assert ours <= commands | {fuzz.rig.availability_topic}, ours - commands
    assert fuzz.rig.home.refused == []
    allowed_on_broker = commands | fuzz.sim.topics_published() | {fuzz.rig.availability_topic}
    seen = fuzz.spy.topics()
    assert seen <= allowed_on_broker, seen - allowed_on_broker


def test_guard_refuses_a_foreign_topic_even_from_a_bad_plan(fuzz: FuzzRig) -> None:
    """The last line of defence: a plan naming a topic that is no command topic is never published."""
    home = fuzz.rig.home
    dev = home.registry.find("coffee machine").device
    assert dev is not None
    before = len(fuzz.rig.published)
    for topic in ("speaker/kitchen/availability", "zigbee2mqtt/Kitchen light/set", "home/#", "../x"):
        out = fuzz.lt.run(home._execute(dev, Plan([(topic, "ON")], Expect(state=frozenset({"on"})))))
        assert not out["ok"] and "refused" in out["error"]
    assert len(fuzz.rig.published) == before
    assert len(home.refused) == 4
    home.refused.clear()
