"""ari-bridge command line: serve | validate | check-config | lab | demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog

from bridge import __version__
from bridge.config import Config, ConfigError, load_config
from bridge.logging import setup_logging
from bridge.ncco.actions import check as check_runnable
from bridge.ncco.models import NccoError, parse_ncco_bytes

DEFAULT_LAB_STATE = Path("/var/lib/ari-bridge/lab")

log = structlog.get_logger(__name__)

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"ari-bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ari-bridge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(metavar="command")

    serve = sub.add_parser("serve", help="run the bridge")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.set_defaults(handler=_serve)

    validate = sub.add_parser("validate", help="validate an NCCO JSON file ('-' for stdin)")
    validate.add_argument("file")
    validate.set_defaults(handler=_validate)

    check = sub.add_parser(
        "check-config", help="check a configuration file (and the environment) as serve does")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(handler=_check_config)

    lab = sub.add_parser("lab", help="the local Asterisk 22 lab")
    lab.add_argument("action", choices=["up", "down", "status"])
    _lab_options(lab)
    # Not for demo: its single bridge serves the one application, never slots.
    lab.add_argument("--slots", type=int, default=0,
                     help="cluster slots: spread calls over the applications APP-1..APP-N")
    lab.set_defaults(handler=_lab)

    demo = sub.add_parser(
        "demo", help="lab + bridge + example application + one demo call, then keep serving"
    )
    _lab_options(demo)
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--app-port", type=int, default=8000)
    demo.add_argument("--once", action="store_true", help="exit after the demo call")
    demo.set_defaults(handler=_demo)
    return parser


def _lab_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_LAB_STATE)
    parser.add_argument("--ari-port", type=int, default=8088)
    parser.add_argument("--sip-port", type=int, default=5060)
    parser.add_argument("--rtp-start", type=int, default=10000)
    parser.add_argument("--rtp-end", type=int, default=10999)
    parser.add_argument("--suite", choices=["testing", "sid"], default="testing")
    parser.add_argument("--engine", choices=["rootfs", "docker"], default="rootfs")
    parser.add_argument("--cache-dir", type=Path, default=Path("/var/cache/ari-bridge"))


def _lab_opts(args: argparse.Namespace) -> Any:
    from bridge.lab import LabOptions

    return LabOptions(
        state_dir=args.state_dir, ari_port=args.ari_port, sip_port=args.sip_port,
        rtp_start=args.rtp_start, rtp_end=args.rtp_end, suite=args.suite,
        engine=args.engine, cache_dir=args.cache_dir, slots=getattr(args, "slots", 0),
    )


# ------------------------------------------------------------------------- commands
def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging(config.log.level, config.log.json_output)
    structlog.get_logger("bridge.cli").info("bridge.starting", version=__version__,
                                            config=str(args.config) if args.config else None)
    if not _preflight(config):
        return 2
    from bridge.app import BridgeService

    run_on_loop(_serve_until_signal(BridgeService(config), config.service.drain_timeout_s),
                use_uvloop=config.service.uvloop)
    return 0


def event_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when wanted and installed; None: asyncio's default loop."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_on_loop(main: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """``asyncio.run`` on the event loop the configuration asks for."""
    with asyncio.Runner(loop_factory=event_loop_factory(use_uvloop)) as runner:
        return runner.run(main)


async def _serve_until_signal(service: Any, drain_timeout_s: float) -> None:
    """Serve until SIGTERM or SIGINT, then drain (bounded by ``drain_timeout_s``) and stop.
    A second signal cuts the drain short."""
    loop = asyncio.get_running_loop()
    log.info("bridge.event_loop", loop=f"{type(loop).__module__}.{type(loop).__name__}")
    received = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, received.set)
    try:
        await service.start()
        await received.wait()
        log.info("bridge.draining", drain_timeout_s=drain_timeout_s)
        drain = asyncio.ensure_future(service.drain(drain_timeout_s))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, drain.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await drain
    finally:
        await service.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("bridge.stopped")


async def _run_until_signal(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _preflight(config: Config) -> bool:
    """The checks check-config runs, logged; False when the bridge must not start."""
    from bridge.preflight import run_checks

    log = structlog.get_logger("bridge.cli")
    report = run_checks(config)
    for warning in report.warnings:
        log.warning("config.warning", problem=warning)
    for error in report.errors:
        log.error("config.invalid", problem=error)
    return report.ok


def _validate(args: argparse.Namespace) -> int:
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"ari-bridge: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        actions = parse_ncco_bytes(body)
        check_runnable(actions)
    except NccoError as exc:
        print(f"invalid NCCO: {exc}", file=sys.stderr)
        return 1
    print(f"valid NCCO: {', '.join(a.action for a in actions)}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from bridge.preflight import describe_stores, run_checks

    config = load_config(args.config)
    report = run_checks(config)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not report.ok:
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"ari-bridge: {args.config}: {len(report.errors)} problem(s); serve would not "
              "start", file=sys.stderr)
        return 2
    print(f"configuration OK: {len(config.applications)} application(s), "
          f"{len(config.numbers)} number(s), {len(config.trunks)} trunk(s)")
    # In a cluster the applications are the slots' (the dialplan's ARI_SLOTS must match).
    apps = (f"{config.stasis_app(1)}..{config.stasis_app(config.cluster.slots)}"
            if config.cluster.enabled else config.ari.app)
    nodes = config.ari.node_configs()
    for node in nodes:
        name = f" node={node.name}" if config.ari.nodes else ""
        print(f"  ari:{name} url={node.url} username={node.username} app={apps} password="
              f"{'set' if node.password.get_secret_value() else 'EMPTY'}")
    if config.cluster.enabled:
        print(f"  cluster: instance={config.cluster.instance()} slots={config.cluster.slots} "
              f"heartbeat_s={config.cluster.heartbeat_s:g} "
              f"dead_after_s={config.cluster.dead_after_s:g}")
    for store in describe_stores(config):
        print("  " + " ".join(f"{k}={v}" for k, v in store.items()))
    return 0


def _lab(args: argparse.Namespace) -> int:
    from bridge.lab import LabError, lab_down, lab_status, lab_up

    opts = _lab_opts(args)
    try:
        if args.action == "up":
            info = lab_up(opts, progress=functools.partial(print, flush=True))
            _print_lab(info)
        elif args.action == "down":
            stopped = lab_down(opts)
            print("lab stopped" if stopped else "lab was not running")
        else:
            status = lab_status(opts)
            if status is None:
                print(f"lab is down (state directory {opts.state_dir})")
                return 3
            _print_lab(status)
    except LabError as exc:
        print(f"ari-bridge lab: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_lab(info: Any) -> None:
    where = (f"container {info.container_id[:12]}" if info.container_id else f"pid {info.pid}")
    print(f"lab is up: Asterisk {info.asterisk_version} (engine {info.engine}, {where})")
    apps = (f"apps {info.app_name}-1..{info.slots} (slots)" if info.slots
            else f"app {info.app_name}")
    print(f"  ARI:         {info.ari_url}  {apps}")
    print(f"  credentials: {info.credentials_file}")
    print(f"  SIP (UDP):   {info.sip_host}:{info.sip_port}")


def _demo(args: argparse.Namespace) -> int:
    from bridge.lab import LabError, lab_down, lab_status, lab_up

    setup_logging(os.environ.get("ARI_BRIDGE_LOG__LEVEL", "warning"))
    opts = _lab_opts(args)
    was_up = lab_status(opts) is not None
    try:
        info = lab_up(opts)
    except LabError as exc:
        print(f"ari-bridge demo: {exc}", file=sys.stderr)
        return 1
    _print_lab(info)
    try:
        return run_on_loop(_demo_async(args, info),
                           use_uvloop=load_config(None).service.uvloop)
    finally:
        if not was_up:  # a lab the demo started is the demo's to stop
            lab_down(opts)
            print("lab stopped")


async def _demo_async(args: argparse.Namespace, info: Any) -> int:
    from bridge.app import BridgeService
    from bridge.examples import welcome
    from bridge.lab.sipp import RtpReceiver, place_call

    app_url = f"http://127.0.0.1:{args.app_port}"
    runner = await welcome.serve("127.0.0.1", args.app_port, lambda line: print("  " + line))
    config = load_config(None, overrides={
        "ari": {"url": info.ari_url, "username": info.ari_username,
                "password": info.ari_password, "app": info.app_name},
        "http": {"host": "127.0.0.1", "port": args.http_port},
        "store": {"path": str(args.state_dir / "calls.sqlite3")},
        "media": {"path": str(args.state_dir / "media")},
        "applications": [{"id": "welcome", "answer_url": f"{app_url}/answer",
                          "event_url": f"{app_url}/event"}],
        "numbers": {"*": "welcome"},
    })
    bridge = BridgeService(config)
    await bridge.start()
    try:
        if not await bridge.gateway.wait_connected(30):
            print(f"the bridge could not reach ARI: {bridge.gateway.last_error}", file=sys.stderr)
            return 1
        print(f"bridge is up: {bridge.base_url} (health: {bridge.base_url}/readyz)")
        print("placing a demo call with sipp to 15551230000 ...")
        receiver = await RtpReceiver.open()
        try:
            result = await place_call(info.sip_host, info.sip_port, "15551230000",
                                      rtp_port=receiver.port)
        finally:
            receiver.close()
        print(f"demo call {'completed' if result.ok else 'FAILED'}: SIP {result.statuses}, "
              f"{receiver.audio_seconds():.1f} s of audio heard, "
              f"{receiver.voiced_seconds():.1f} s of it speech")
        if not result.ok:
            print(result.errors[-2000:], file=sys.stderr)
            return 1
        await _wait_for_completed(runner)
        if args.once:
            return 0
        print(json.dumps({"answer_url": f"{app_url}/answer", "sip": f"{info.sip_host}:"
                          f"{info.sip_port}"}))
        print("serving; call the lab's SIP address to try again. Ctrl-C to stop.")
        await _run_until_signal(asyncio.Event().wait())
        return 0
    finally:
        await bridge.stop()
        await runner.cleanup()


async def _wait_for_completed(runner: Any) -> None:
    from bridge.examples.welcome import EVENTS_KEY

    events = runner.app[EVENTS_KEY]
    for _ in range(100):
        if any(e.get("status") == "completed" for e in events):
            return
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
