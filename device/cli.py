"""`speaker run | check | demo`: the device's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__
from .config import ConfigError, Settings, load_settings

EXIT_CONFIG = 2  # `speaker run`: the config file is missing or invalid
EXIT_FAILED = 1  # a check failed, or the daemon could not start


def load_and_check(path: str) -> Settings:
    """The settings, with what the config names checked that config.py cannot (the wake model)."""
    from .wakeword import check_model

    settings = load_settings(path)
    check_model(settings)
    return settings


def _load(path: str) -> Settings:
    try:
        return load_and_check(path)
    except ConfigError as exc:
        print(f"speaker: config error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon in the foreground."""
    from .app import run_daemon
    from .logs import settings_secrets, setup_logging

    settings = _load(args.config)
    setup_logging(args.log_level or settings.log.level, settings_secrets(settings))
    try:
        return asyncio.run(run_daemon(settings))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a fault we could not survive: say what, exit non-zero for systemd
        import logging

        logging.getLogger("speaker").critical("daemon failed: %s: %s", type(exc).__name__, exc, exc_info=True)
        return EXIT_FAILED


async def _checks(settings: Settings) -> list[tuple[str, Callable[[], Awaitable[str] | str]]]:
    from .app import gpio_wanted, mqtt_wanted

    checks: list[tuple[str, Callable[[], Awaitable[str] | str]]] = []

    def audio_in() -> str:
        from .audio.capture import probe_input

        return probe_input(settings.audio.input)

    def audio_out() -> str:
        from .audio.playback import probe_output

        return probe_output(settings.audio.output)

    def wake() -> str:
        from .wakeword import probe_model

        return probe_model(settings.wake)

    checks += [("microphone", audio_in), ("speaker", audio_out), ("wake word", wake)]

    if settings.audio.echo_cancellation:

        async def echo() -> str:
            from .audio.echo_check import check_echo

            return await check_echo(settings.audio, settings.state_dir, settings.wake)

        checks.append(("echo cancellation", echo))

    if settings.auth.mode == "none":

        def no_auth() -> str:
            raise RuntimeError("no [auth] token_url, api_key_file or OPENAI_API_KEY: the device cannot open a session")

        checks.append(("token source", no_auth))
    else:

        async def tokens() -> str:
            from .realtime.tokens import TokenSource

            source = TokenSource(settings)
            try:
                return await source.probe()
            finally:
                await source.close()

        checks.append(("token source", tokens))

    if mqtt_wanted(settings):

        async def mqtt() -> str:
            from .mqtt import MqttConnection

            s = settings.mqtt
            conn = MqttConnection(s, asyncio.get_running_loop(), availability_topic=f"{s.topic_prefix}/{s.device_id}/availability")
            return await conn.probe()

        checks.append(("mqtt broker", mqtt))

    if settings.devices:

        def devices() -> str:
            from .tools.home import check_devices

            return check_devices(settings)

        checks.append(("home devices", devices))

    # ---- MCP: one line per local server (remote ones are reached by the cloud, not from here) ----
    for server in settings.mcp:
        if server.local:

            async def mcp(server: Any = server) -> str:
                from .tools.mcp_bridge import McpBridge
                from .tools.registry import ToolRegistry

                return await McpBridge(server, ToolRegistry(), call_timeout_s=settings.realtime.tool_timeout_s).probe()

            checks.append((f"mcp {server.name}", mcp))
    # ---- end MCP ----

    if gpio_wanted(settings):

        def gpio() -> str:
            from .controls import probe_gpio

            return probe_gpio(settings.gpio, settings.leds)

        checks.append(("gpio", gpio))
    return checks


async def _run_checks(settings: Settings) -> int:
    failed = 0
    print(f"ok    config: {settings.path}")
    for name, check in await _checks(settings):
        try:
            result: Any = check()
            if asyncio.iscoroutine(result):
                result = await asyncio.wait_for(result, 15)
            print(f"ok    {name}: {result}")
        except asyncio.TimeoutError:
            failed += 1
            print(f"FAIL  {name}: no answer within 15 s")
        except Exception as exc:
            failed += 1
            print(f"FAIL  {name}: {exc}")
        sys.stdout.flush()
    return EXIT_FAILED if failed else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config and probe what it names; one line per check."""
    from .logs import settings_secrets, setup_logging

    try:
        settings = load_and_check(args.config)
    except ConfigError as exc:  # the first check failed: one line like the others, exit 1
        print(f"FAIL  config: {exc}")
        return EXIT_FAILED
    setup_logging("error", settings_secrets(settings))
    return asyncio.run(_run_checks(settings))


EXIT_NOT_RUNNING = 3  # `speaker status`: the daemon is not running (as `systemctl status` says it)
INSTALLED_STATE_DIR = "/var/lib/realtime-speaker"  # the unit's StateDirectory=


def cmd_status(args: argparse.Namespace) -> int:
    """The daemon's state, uptime, last error and last conversation, from its status file."""
    import os
    from pathlib import Path

    from .status_file import describe, read_status

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"speaker: config error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # `sudo speaker status` outside the unit has no $STATE_DIRECTORY: look where the unit keeps it too.
    dirs = [settings.state_dir]
    if not settings.state.dir and not os.environ.get("STATE_DIRECTORY"):
        dirs.append(Path(INSTALLED_STATE_DIR))
    problems = []
    for directory in dirs:
        try:
            data = read_status(directory)
        except FileNotFoundError:
            problems.append(f"{directory}: no status file (the daemon has not run here)")
            continue
        except PermissionError:
            problems.append(f"{directory}: permission denied (try sudo, or join the group speaker)")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"{directory}: unreadable status file ({exc})")
            continue
        running, lines = describe(data)
        print("\n".join(lines))
        return 0 if running else EXIT_NOT_RUNNING
    print("state:             unknown: " + "; ".join(problems))
    return EXIT_NOT_RUNNING


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole device offline: simulated audio devices, local realtime simulator."""
    from .demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speaker", description="realtime-speaker: a hands-free Raspberry Pi smart speaker")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, help="TOML config file")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override [log] level")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate the config and probe the devices it names")
    check.add_argument("--config", required=True, help="TOML config file")
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="what the daemon is doing: state, uptime, last error, last conversation")
    status.add_argument("--config", required=True, help="TOML config file (for the state directory)")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="the whole device offline, no hardware and no API key")
    demo.add_argument("--say", action="append", help="what the simulated person says (repeatable); default: a short scenario")
    demo.add_argument("--out", default="demo-output", help="folder for the reply WAV and the logs (default: ./demo-output)")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's log lines too")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
