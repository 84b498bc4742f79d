"""Benchmarks: ironclaw.sealed against clevis and systemd-creds on the same swtpm (``make bench``)."""
