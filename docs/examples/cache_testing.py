"""Test code that caches, without a server: MemoryBackend, ManualClock, and a signed cache."""

import asyncio

from scalekit.cache import Cache, MemoryBackend, Signer
from scalekit.testing import ManualClock


async def main() -> None:
    clock = ManualClock()
    cache = Cache(
        MemoryBackend(max_entries=1000, clock=clock),
        namespace="prices",
        default_ttl=60,
        ttl_jitter=0,  # deterministic expiry in tests
        stale_if_error=300,
        signer=Signer([b"a-32-byte-secret-from-your-vault"]),  # newest key first
        clock=clock,
    )
    calls = 0

    async def fetch_price() -> float:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("pricing service down")
        return 9.99

    assert await cache.get_or_load("sku-1", fetch_price) == 9.99
    clock.set(90)  # 30 s past expiry; the pricing service is down now
    assert await cache.get_or_load("sku-1", fetch_price) == 9.99  # stale-if-error
    stats = cache.stats()
    assert (stats.loads, stats.load_errors, stats.stale_on_error) == (2, 1, 1)

    # a value written without the signing key (say, by someone else on a shared server)
    await cache.backend.set("prices:sku-2", b'{"injected": true}', None)
    assert await cache.get("sku-2") is None
    assert cache.stats().decode_errors == 1


asyncio.run(main())
