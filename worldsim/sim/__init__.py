"""worldsim.sim."""
