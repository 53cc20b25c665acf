"""Names of the placement policies (kept apart from the registry so that listing them imports nothing)."""

POLICY_NAMES = ("binpack", "spread", "bestfit", "fgd", "fgd-plain", "random")
