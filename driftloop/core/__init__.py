"""driftloop's shared core: names, parameters, contracts, errors, settings and the pure
domain rules. It imports nothing from blocks, tasks, flows, deployments or the app."""
