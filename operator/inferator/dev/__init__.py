"""Local development and test bed: build Kubernetes from the Go module proxy, run it on loopback."""
