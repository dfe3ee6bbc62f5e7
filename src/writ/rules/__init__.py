"""The engine's rules: consent, freezes, rollbacks, stuck-holder waking and authority. Each rule plugs into the engine through writ.engine.hooks and never reaches the kernel's private state."""
