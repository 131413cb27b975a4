"""Ports for the lab's peers: outside the ephemeral range, never handed out twice at once,
and a sipp that cannot start says why (its exit code and stderr), retrying a port clash."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bridge.lab import ports
from bridge.lab.sipp import Agent, SippStartError, _start_listening, sipp_binary


def _ephemeral_range() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_ports_are_outside_the_range_binds_to_port_0_use() -> None:
    ephemeral = _ephemeral_range()
    for _ in range(50):
        assert ports.free_port() not in ephemeral
        media = ports.free_media_port()
        assert media not in ephemeral and media + 2 not in ephemeral


def test_a_port_is_not_handed_out_twice_in_a_row() -> None:
    handed = [ports.free_port(socket.SOCK_STREAM) for _ in range(300)]
    assert len(set(handed)) == len(handed)


def test_a_port_someone_holds_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ports.free_port()
    monkeypatch.setattr(ports, "SERVICE_PORTS", range(base, base + 3))
    monkeypatch.setattr(ports, "_handed_out", {})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", base))  # someone holds UDP on one port ...
        tcp.bind(("127.0.0.1", base + 1))  # ... and TCP on the next (SIP needs both)
        assert ports.free_port() == base + 2
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port()  # base + 2 was just handed out


async def test_an_agent_whose_port_was_taken_starts_on_another() -> None:
    agent = Agent(200)
    taken = agent.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as thief:
        thief.bind(("127.0.0.1", taken))  # another process took it before sipp bound it
        async with agent:
            assert agent.port != taken
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with probe, pytest.raises(OSError):
                probe.bind(("127.0.0.1", agent.port))  # sipp holds its new port


async def test_a_sipp_that_exits_early_names_its_exit_code_and_stderr(tmp_path: Path) -> None:
    with pytest.raises(SippStartError) as caught:
        await _start_listening(
            "sipp agent", "127.0.0.1", ports.free_port(), tmp_path, lambda port, media: [
                sipp_binary(), "-sf", "no-such-scenario.xml", "-i", "127.0.0.1",
                "-p", str(port), "-mp", str(media), "-nostdin",
            ])
    message = str(caught.value)
    assert "exited with code" in message
    assert "no-such-scenario.xml" in message  # sipp's own words, from its stderr
