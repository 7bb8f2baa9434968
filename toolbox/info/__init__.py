"""Info and server endpoints: version, work and home dirs, init, env, system metrics."""
