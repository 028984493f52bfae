"""worldsim.inference."""
