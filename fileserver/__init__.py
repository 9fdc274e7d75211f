"""fileserver: a static file server whose hot path runs in the kernel (TC ingress, eBPF)."""

__version__ = "0.1.0"
SERVER_NAME = f"fileserver/{__version__}"
