"""Tests of the access policy (a package, so that its conftest and helpers
do not take the module name "conftest" from tests/fs in a shared run)."""
