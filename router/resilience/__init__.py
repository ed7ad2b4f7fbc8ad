"""Resilience: circuit breakers, the retry loop, deadlines and mid-stream continuation."""
