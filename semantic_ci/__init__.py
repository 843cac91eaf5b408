"""semantic_ci: layer 3 checks, configuration, runner, certificates and hooks."""
