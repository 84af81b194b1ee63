"""Graft: fine-tune and serve LoRA addons on your own Kubernetes cluster."""

__version__ = "0.1.0"
