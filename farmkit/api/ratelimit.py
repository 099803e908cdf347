"""Per-user rate limits: a token bucket in Redis, one atomic Lua script per request.

Each user has ``burst`` tokens, refilled at ``rate`` per second; a request takes one. With none left
the answer is 429 and ``Retry-After`` says when the next token is there. The bucket lives in Redis so
that every replica of the API shares it; Redis's own clock (``TIME``) is the clock, so replicas whose
clocks disagree still agree on the bucket.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)

# KEYS[1]: the user's bucket (hash: t = tokens, ts = last refill, seconds). ARGV: rate, burst, cost.
# Returns {allowed 0/1, seconds until enough tokens (string), tokens left (string)}.
_BUCKET_LUA = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait), tostring(tokens)}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float     # seconds until a request would be allowed (0 when allowed)
    remaining: float


class TokenBucket:
    """``check(user_id)`` takes a token from the user's bucket; ``client`` is a ``redis.Redis``."""

    def __init__(self, client, rate: float, burst: float, prefix: str = "farm:api:rl"):
        self.client, self.rate, self.burst, self.prefix = client, float(rate), float(burst), prefix
        self._script = client.register_script(_BUCKET_LUA)

    def check(self, user_id: str, cost: float = 1.0) -> Verdict:
        allowed, wait, left = self._script(keys=[f"{self.prefix}:{user_id}"],
                                           args=[repr(self.rate), repr(self.burst), repr(float(cost))])
        return Verdict(bool(int(allowed)), float(wait), float(left))

    @staticmethod
    def retry_after_header(verdict: Verdict) -> str:
        return str(max(1, math.ceil(verdict.retry_after)))
