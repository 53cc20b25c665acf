"""Pure domain types: resources and units, nodes, workload specs, statuses and errors."""
