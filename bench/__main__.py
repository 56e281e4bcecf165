"""``python -m bench``: run the throughput benchmark and print a Markdown report.

Order of work: check each peer once (start it, deliver one message with smtp-source, stop
it; a peer that fails is skipped with one line saying why), then the comparative scenarios
interleaved by round (peer order rotates each round; every run gets a freshly started peer
with an empty queue and Maildir), then the postwright-only scenarios once. A relay scenario
runs only the peers that relay (postwright, Postfix), each with its own fresh smtp-sink as the
relay host. Results go to stdout as a Markdown table and to ``bench/results/<time>.json``.

This is a measurement tool, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import postwright

from . import load, peers, report
from .destination import RelayDestination
from .load import RunResult, Scenario
from .peers import DEFAULT_PEERS, PEER_NAMES, RELAY_PEERS, SINK_LOOPS, Peer, PeerError

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    names = [*load.scenarios(False), *load.EXTRA_SCENARIOS]
    parser.add_argument("--quick", action="store_true",
                        help="small counts and one round: a smoke check under a minute")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the comparative scenarios (default 2, --quick 1)")
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        help=f"run only these (repeat or comma-separate): {', '.join(names)}")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help=f"comma-separated subset of {','.join(PEER_NAMES)} "
                        f"(default {','.join(DEFAULT_PEERS)})")
    parser.add_argument("--tmpdir", type=Path, default=None,
                        help="where the bench's temporary directory goes (default: $TMPDIR)")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    chosen = [n.strip() for item in args.scenario for n in item.split(",") if n.strip()]
    for name in chosen:
        if name not in names:
            parser.error(f"unknown scenario {name!r}; choose from {', '.join(names)}")
    args.scenarios = chosen or names
    args.peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]
    for name in args.peer_list:
        if name not in PEER_NAMES:
            parser.error(f"unknown peer {name!r}; choose from {', '.join(PEER_NAMES)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def say(text: str) -> None:
    print(text, flush=True)


def command_line(argv: list[str]) -> str:
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd()))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, "-m", "bench", *argv])


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = subprocess.run(["git", "-C", str(peers.REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {"cpus": str(os.cpu_count()), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(),
            "postwright": f"{_version('postwright')} ({postwright.build()})",
            "commit": git or "unknown", "aiosmtpd": _version("aiosmtpd"),
            "uvloop": _version("uvloop")}


def preflight(name: str, base: Path | None, info: dict[str, str]) -> str | None:
    """Start ``name``, deliver one message with smtp-source, stop it; the reason it failed."""
    why = peers.unavailable(name)
    if why:
        return why
    peer = peers.make_peer(name, base)
    try:
        peer.start()
        if isinstance(peer, peers.PostfixPeer):
            info["postfix"] = peer.version()
        if isinstance(peer, peers.SinkPeer):
            info[f"{name} loop"] = peer.loop_class()
        one = Scenario("preflight", 1, 200, sessions=1)
        result = load.run_load(peer, one, 0, e2e_timeout=30)
        if not result.ok:
            return f"one-message check failed: {result.error}; log: {peer.log_tail()}"
        return None
    except PeerError as exc:
        return str(exc)
    finally:
        peers.discard(peer)


def run_one(name: str, scenario: Scenario, round_no: int, base: Path | None) -> RunResult:
    os.sync()  # what earlier runs left for the disk to write is not this run's cost
    destination = RelayDestination() if scenario.relay else None
    peer = peers.make_peer(name, base, relayhost=destination.port if destination else None)
    try:
        if destination is not None:
            destination.start()
        peer.start()
        result = load.run_load(peer, scenario, round_no, destination=destination)
        if result.error:
            tail = peer.log_tail(3)
            result.error += f"; log: {tail}" if tail else ""
    except PeerError as exc:
        result = RunResult(scenario.name, name, round_no, error=f"start failed: {exc}")
    finally:
        peers.discard(peer)
        if destination is not None:
            destination.stop()  # after the peer: its cached connections have ended too
    if destination is not None:
        result.relay_sessions = destination.peer_sessions
        if result.error and destination.other_output:
            result.error += f"; smtp-sink: {destination.describe_output()}"
    return result


def progress(r: RunResult, rounds: int, relay: bool = False) -> str:
    head = f"round {r.round}/{rounds}  {r.scenario:<13} {r.peer:<15}"
    if r.accepted_rate is None:
        return f"{head}  FAILED: {r.error}"
    p50 = report.percentile(r.latencies_ms, 50)
    p99 = report.percentile(r.latencies_ms, 99)
    e2e = f"{r.e2e_rate:8.1f}" if r.e2e_rate is not None else "     n/a"
    text = (f"{head}  accepted {r.accepted_rate:8.1f} msg/s  "
            f"{'relayed' if relay else 'e2e'} {e2e} msg/s  "
            f"p50 {p50 or 0:6.2f} ms  p99 {p99 or 0:6.2f} ms (n={len(r.latencies_ms)})  "
            f"peak RSS {r.peak_rss_kb / 1024:6.1f} MB")
    if r.relay_sessions is not None:
        text += f"  connections to smtp-sink {r.relay_sessions}"
    return text + (f"  ERROR: {r.error}" if r.error else "")


def run_extra(name: str, quick: bool, base: Path | None) -> dict[str, object]:
    if name == "idle-10k":
        count = 1000 if quick else 10_000
        nofile = load.raise_nofile(count + 4096)
        if nofile < count + 100:
            return {"scenario": name, "skipped": f"RLIMIT_NOFILE is {nofile}, need {count}"}
        peer: Peer = peers.make_peer("postwright", base, {
            "max_connections": 20_000, "max_connections_per_client": 20_000})
    else:
        size = (5 if quick else 50) * 2**20
        peer = peers.make_peer("postwright", base, {"max_message_size": size + 2**20})
    try:
        peer.start()
        time.sleep(0.5)  # let start-up settle before the RSS baseline
        if name == "idle-10k":
            return load.run_idle(peer, count)
        return load.run_big(peer, size)
    except PeerError as exc:
        return {"scenario": name, "peer": "postwright", "ok": False, "error": str(exc)}
    finally:
        peers.discard(peer)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = command_line(argv)
    if not Path(load.SMTP_SOURCE).exists():
        say(f"bench: skipped: {load.SMTP_SOURCE} not found (apt-get install postfix)")
        return 0
    say(f"$ {command}")
    # Every peer's directory lives under this one, removed at the very end: deleting a run's
    # files between runs would bill the next peer for the file system's clean-up.
    base = Path(tempfile.mkdtemp(prefix="bench-", dir=args.tmpdir))
    base.chmod(0o711)  # Postfix's own users must reach their peer's directory inside
    # Each peer's directory in block groups of its own (ext4's Orlov allocator spreads the
    # children of a "top" directory): files a peer deletes during its run (Postfix's queue
    # files) then do not slow down the next peer's file creations. Elsewhere a no-op.
    with contextlib.suppress(OSError):  # no chattr here: nothing to do
        subprocess.run(["chattr", "+T", str(base)], capture_output=True, check=False)
    try:
        return run_bench(args, command, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_bench(args: argparse.Namespace, command: str, base: Path) -> int:
    info = machine()
    all_scenarios = load.scenarios(args.quick)
    comparative = {n: s for n, s in all_scenarios.items() if n in args.scenarios}
    skipped: dict[str, str] = {}
    relay_why = RelayDestination.unavailable()
    if relay_why:
        for name in [n for n, s in comparative.items() if s.relay]:
            del comparative[name]
            skipped[name] = relay_why
            say(f"{name}: skipped: {relay_why}")
    extras_wanted = [n for n in load.EXTRA_SCENARIOS if n in args.scenarios]
    # a peer is checked only if some chosen scenario runs it (relay ones: RELAY_PEERS)
    needed = [p for p in args.peer_list
              if any(not s.relay or p in RELAY_PEERS for s in comparative.values())]
    if extras_wanted and "postwright" not in needed and "postwright" in args.peer_list:
        needed.append("postwright")
    active = []
    for name in needed:
        why = preflight(name, base, info)
        if why:
            skipped[name] = why
            say(f"{name}: skipped: {why}")
        else:
            active.append(name)
            say(f"{name}: ok")
    results: list[RunResult] = []
    started = time.monotonic()
    lineup = [p for p in active if p in args.peer_list]
    for round_no in range(1, args.rounds + 1):
        turn = (round_no - 1) % max(1, len(lineup))
        order = lineup[turn:] + lineup[:turn]
        for scenario in comparative.values():
            for name in order:
                if scenario.relay and name not in RELAY_PEERS:
                    continue  # the aiosmtpd sinks store and forward nothing
                result = run_one(name, scenario, round_no, base)
                results.append(result)
                say(progress(result, args.rounds, scenario.relay))
    extras: list[dict[str, object]] = []
    for name in extras_wanted:
        if "postwright" not in active:
            extras.append({"scenario": name, "skipped": skipped.get("postwright",
                                                                    "postwright not selected")})
        else:
            extras.append(run_extra(name, args.quick, base))
        say(f"{name}: {report.describe_extra(extras[-1])}")
    elapsed = time.monotonic() - started
    summaries = report.summarise(results)
    # the event loop each aiosmtpd peer reported, e.g. "peer aiosmtpd on asyncio...."
    loops = "; ".join(f"peer {n} on {info[f'{n} loop']}" for n in SINK_LOOPS
                      if f"{n} loop" in info)
    versions = ", ".join(f"{k} {info[k]}" + (f" ({loops})" if k == "aiosmtpd" and loops else "")
                         for k in ("python", "postwright", "postfix", "aiosmtpd", "uvloop")
                         if k in info)
    header = [
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpus']} CPUs ({info['cpu']}), Linux {info['kernel']}; {versions}; "
        f"commit {info['commit']}; {args.rounds} round(s), {elapsed:.0f} s.",
    ]
    header += [f"Skipped: {name}: {why}" for name, why in skipped.items()]
    text = report.markdown(summaries, comparative, lineup, extras, header)
    say("")
    say(text)
    if not args.no_json:
        path = report.write_json(RESULTS, {
            "command": command, "machine": info, "rounds": args.rounds, "quick": args.quick,
            "skipped": skipped, "scenarios": {n: vars(s) for n, s in comparative.items()},
            "summary": summaries, "runs": results, "extras": extras,
            "elapsed_seconds": round(elapsed, 1),
        })
        say(f"results: {path}")
    failed = any(not r.ok for r in results) or any(
        e.get("ok") is False for e in extras)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
