"""The run configuration: its schema, the step declarations, strategy strings, ready-to-run defaults and what in a config is trusted."""
