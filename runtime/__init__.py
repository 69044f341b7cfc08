"""The runtime side of kambda: the gRPC runtime interface, the in-pod agent and the runtime images."""
