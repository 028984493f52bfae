"""worldsim.eval."""
