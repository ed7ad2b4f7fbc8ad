"""Serving one request: orchestration, failover, one attempt, hedging, the ledger."""
