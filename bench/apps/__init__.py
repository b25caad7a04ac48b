"""The servers the bench starts besides the gateway itself: three baselines that answer the same query
from the same row without the gateway's edge, and the gateway with field authorization switched off."""
