"""The autoscaling controller: signals in, a pure policy, scaler backends out (DESIGN §7)."""
