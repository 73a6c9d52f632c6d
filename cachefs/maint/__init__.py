"""Offline tools for cache folders no daemon holds: fsck and --verify-remote."""
