#!/usr/bin/env python3
"""Node-to-node delivery benchmark: signed community events from a host to a member's node.

Two real nodes on loopback: ``host`` runs in this process (``rxfed.testing``) and holds a
community with one member on ``member``, a separate ``rxfed node run`` process. Messages are built and signed by the community's members
before the clock starts; then

* delivery: N events are accepted by the host (validated, sequenced, stamped with the
  host's key, stored, queued: the host's real path) while delivery to the member is held;
  then delivery is released and the clock runs until the member node has verified every
  stamp and stored every event: ``events_per_s`` = N / time (signed transactions of up to
  500 events, each event's stamp verified and stored durably by the receiver).
* end to end: N more events accepted by the host while it delivers, to the last one stored
  at the member: ``end_to_end_events_per_s``.
* latency: events are offered at a fixed rate (default 100/s) for a few seconds, one at a
  time; each event's latency is from its acceptance at the host to its storage at the member
  node. ``p50_ms``, ``p99_ms``.

Arrival is read from the member node's database (read-only) every few milliseconds. The
last line of the output is one JSON object.

    python bench/federation.py --n 5000 --rate 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodeproc import wait_health

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rxfed.client import PatientClient  # noqa: E402
from rxfed.client.community import PatientCommunities  # noqa: E402
from rxfed.crypto.groups import SenderKey  # noqa: E402
from rxfed.protocol import community as pc  # noqa: E402
from rxfed.testing import NodeHarness, free_port  # noqa: E402


async def wait(predicate, timeout=60.0, step=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(step)
    raise TimeoutError("the member node did not catch up")


def _member_node(tmp: Path, host: NodeHarness):
    """Create and start the member node as its own process; returns (process, url, node id, db)."""
    port = free_port()
    data = tmp / "member"
    rxfed = [sys.executable, "-m", "rxfed"]
    subprocess.run([*rxfed, "node", "init", str(data), "--name", "member", "--port", str(port)], check=True,
                   capture_output=True)
    subprocess.run([*rxfed, "node", "peers", str(data), "allow", host.node_id, "--url", host.url], check=True,
                   capture_output=True)
    config = (data / "rxfed.toml").read_text()
    for name in ("requests_per_second", "burst", "anonymous_per_minute", "anonymous_burst"):
        config = re.sub(rf"^{name} = .*$", f"{name} = 1000000", config, flags=re.M)
    (data / "rxfed.toml").write_text(config)
    proc = subprocess.Popen([*rxfed, "node", "run", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_health(url)
    return proc, url, f"127.0.0.1:{port}", data / "rxfed.db"


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rxfed-fedbench-"))
    host = await NodeHarness(tmp / "host", name="host").start()
    proc, member_url, member_id, member_db = _member_node(tmp, host)
    clients = []
    try:
        await host.app_store().set_peer_policy(member_id, "allowed", url=member_url)
        await host.state.federation.policy_changed()
        admin_client, _ = await PatientClient.register(host.url, tmp / "admin", "bench pass phrase", kdf="min")
        member_client, _ = await PatientClient.register(member_url, tmp / "alice", "bench pass phrase", kdf="min")
        clients += [admin_client, member_client]
        admin = PatientCommunities(admin_client)
        address = await admin.create("bench")
        await PatientCommunities(member_client).join(address)

        async def joined():
            view = await admin.read(address)
            return view.state is not None and len(view.state.joined()) == 2

        await wait(joined)
        mine = await admin.membership(address)
        state = (await admin.history(mine)).state
        key = SenderKey.generate(state.next_epoch(mine.member.public))
        communities = host.state.communities
        community_id = mine.address.id

        async def accept(batch: list[dict]) -> None:
            async with host.state.federation.lock:
                hosted = await communities.hosted(mine.address)
                stored, after = [], hosted
                for event in batch:
                    after, e, _ = communities.accept(after, mine.address, event)
                    stored.append(e)
                outbox = await communities.fan_out(hosted.state, after.state, stored)
                await host.app_store().append_community_events(communities.row(after.state, host.state.now()),
                                                               stored, outbox=outbox, now=host.state.now())
                communities.remember(community_id, after)
            host.state.federation.notify()

        await accept([pc.make_sender_key(mine.member, state, key)])
        now = int(time.time())

        def messages(count: int, start: int) -> list[dict]:
            # About a hundred messages a second from this one sender, as times go.
            return [pc.make_message(mine.member, key, mine.address, f"bench message {start + i}",
                                    now + (start + i) // 100)[0] for i in range(count)]

        db = sqlite3.connect(f"file:{member_db}?mode=ro", uri=True, check_same_thread=False)

        def mirror_seq_now() -> int:
            row = db.execute("SELECT seq FROM communities WHERE id=?", (community_id,)).fetchone()
            return row[0] if row else 0

        async def mirror_seq() -> int:
            return mirror_seq_now()

        base = (await host.app_store().community(community_id, mine.address.host)).seq
        await wait(lambda: _at_least(mirror_seq, base))

        async def hold(policy: str) -> None:
            await host.app_store().set_peer_policy(member_id, policy, url=member_url)
            await host.state.federation.policy_changed()

        # delivery: N events accepted and queued while delivery is held, then released
        await hold("blocked")
        queued = messages(args.n, 0)
        for i in range(0, len(queued), 500):
            await accept(queued[i:i + 500])
        t0 = time.perf_counter()
        await hold("allowed")
        await wait(lambda: _at_least(mirror_seq, base + args.n), timeout=300)
        delivery = time.perf_counter() - t0

        # end to end: the host accepts (validates, stamps, stores) while it delivers
        batch = messages(args.n, args.n)
        t0 = time.perf_counter()
        for i in range(0, len(batch), 500):
            await accept(batch[i:i + 500])
        await wait(lambda: _at_least(mirror_seq, base + 2 * args.n), timeout=300)
        elapsed = time.perf_counter() - t0

        # latency at a fixed offered rate; arrivals read from the member's database
        count = int(args.rate * args.seconds)
        offered = messages(count, 2 * args.n)
        seq = (await host.app_store().community(community_id, mine.address.host)).seq
        sent: dict[int, float] = {}
        arrived: dict[int, float] = {}
        done = asyncio.Event()

        async def watch():
            last = seq
            while last < seq + count:
                current = await asyncio.to_thread(mirror_seq_now)
                t = time.perf_counter()
                for s_ in range(last + 1, current + 1):
                    arrived[s_] = t
                last = max(last, current)
                await asyncio.sleep(0.001)
            done.set()

        watcher = asyncio.create_task(watch())
        start = time.perf_counter()
        for i, event in enumerate(offered):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[seq + i + 1] = time.perf_counter()
            await accept([event])
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            watcher.cancel()
        latencies = sorted((arrived[s_] - t) * 1000 for s_, t in sent.items() if s_ in arrived)
        q = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2)  # noqa: E731
        return {"peer": "rxfed-federation", "n": args.n, "events_per_s": round(args.n / delivery, 1),
                "end_to_end_events_per_s": round(args.n / elapsed, 1), "rate": args.rate, "latency_n": len(latencies),
                "p50_ms": q(0.5), "p99_ms": q(0.99), "mean_ms": round(statistics.mean(latencies), 2),
                "complete": len(latencies) == count}
    finally:
        for client in clients:
            await client.close()
        await host.stop()
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)


async def _at_least(get, n: int) -> bool:
    return await get() >= n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="events for the throughput phase")
    ap.add_argument("--rate", type=float, default=100.0, help="offered events per second for the latency phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    args = ap.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(f"delivered {result['n']} signed events host -> member node: {result['events_per_s']} events/s "
          f"({result['end_to_end_events_per_s']} events/s accepted and delivered)", file=sys.stderr)
    print(f"at {result['rate']:g} events/s offered: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms",
          file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
