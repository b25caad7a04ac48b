"""The baseline servers: the same query answered from the same row, without the gateway's edge."""
