"""The service app on top of every other layer: the supervisor, the stack `driftloop up`
starts, the CLI, the bootstrap of pools, blocks and automations, and the demo set-up."""
