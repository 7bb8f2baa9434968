"""Process APIs: one-shot execution, sessions, PTYs, interpreters, and their output store."""
