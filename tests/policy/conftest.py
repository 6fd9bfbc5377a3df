"""Fixtures of the access policy tests; they live in policyhelp.py (see there)."""

from .policyhelp import make_policy_mount, shop, users  # noqa: F401  (registers the fixtures)
