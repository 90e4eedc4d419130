"""A FastAPI route protected by a pipeline (timeout, retry, breaker, bulkhead) with a fallback,
behind an adaptive load-shedding middleware."""

import asyncio

import httpx
from fastapi import FastAPI

from scalekit.resilience import (
    AdaptiveLimit,
    AdaptiveLimitMiddleware,
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    CountWindow,
    Fallback,
    Pipeline,
    Retry,
    Timeout,
)


class RecommenderDown(Exception):
    pass


calls_to_recommender = 0


async def fetch_recommendations(user_id: int) -> list[str]:
    """The flaky downstream (a real app would call it over HTTP)."""
    global calls_to_recommender
    calls_to_recommender += 1
    raise RecommenderDown("connection refused")


breaker = CircuitBreaker("recommender", window=CountWindow(20), minimum_calls=4, open_duration=30.0)
POPULAR = ["bestseller-1", "bestseller-2"]

# Order does not matter: Pipeline sorts them into Fallback > Timeout > Retry > breaker > Bulkhead.
recommendations = Pipeline(
    Fallback(handler=lambda exc: POPULAR),  # degrade gracefully to a static list
    Timeout(1.0),  # one budget for the whole operation, retries included
    Retry(attempts=2, wait_initial=0.01, on=RecommenderDown),
    breaker,  # sees every attempt; when open, no retry and no call
    Bulkhead(10, max_queue=20, max_wait=0.5),
)(fetch_recommendations)

app = FastAPI()
app.add_middleware(AdaptiveLimitMiddleware, limit=AdaptiveLimit(latency_threshold=0.5))


@app.get("/users/{user_id}/recommendations")
async def recommendations_route(user_id: int) -> dict[str, list[str]]:
    return {"items": await recommendations(user_id)}


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for _ in range(3):
            response = await client.get("/users/7/recommendations")
            assert response.status_code == 200
            assert response.json() == {"items": POPULAR}  # served by the fallback
    # 2 requests x 2 attempts opened the breaker; the 3rd request never reached the recommender
    assert breaker.state is BreakerState.OPEN
    assert calls_to_recommender == 4
    print("fallback served; breaker", breaker.state.value, "after", calls_to_recommender, "calls")


asyncio.run(main())
