#!/usr/bin/env python3
"""Open N idle CONNECT tunnels through an HTTP proxy and hold them.

    python3 bench/tunnels.py PROXY_HOST:PORT TARGET_HOST:PORT N

Opens the tunnels (at most 256 handshakes in flight), checks each proxy answered
200, prints "ready OPEN FAILED" on one line, then holds every tunnel open, sending
nothing, until stdin is closed (or 600 s pass). Used by bench/proxy.sh to measure a
proxy's memory per idle tunnel. Standard library only.
"""

import asyncio
import sys


async def open_tunnel(proxy_host, proxy_port, target, gate):
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(proxy_host, proxy_port), 30)
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b"?"
        if status != b"200":
            writer.close()
            raise RuntimeError(f"proxy answered {head[:80]!r}")
        return writer


async def main():
    proxy, target, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    host, port = proxy.rsplit(":", 1)
    gate = asyncio.Semaphore(256)
    results = await asyncio.gather(
        *(open_tunnel(host, int(port), target, gate) for _ in range(count)),
        return_exceptions=True)
    writers = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"tunnels: first error: {errors[0]!r}", file=sys.stderr)
    print(f"ready {len(writers)} {len(errors)}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.read), 600)
    except asyncio.TimeoutError:
        pass
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
