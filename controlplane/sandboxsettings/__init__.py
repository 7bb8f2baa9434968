"""Per-sandbox settings beyond the lifecycle: network settings, secrets, SSH, telemetry."""
