"""worldsim.models."""
