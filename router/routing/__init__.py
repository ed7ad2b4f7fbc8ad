"""Routing: the estimates of each deployment and the policy that ranks them."""
