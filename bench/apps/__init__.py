"""The servers the bench starts besides the gateway itself: three baselines that answer the same query
from the same row without the gateway's edge, and the gateway's comparison builds (without field
authorization, admission or audit entries), each composed from `gateway.app`'s public parts."""
