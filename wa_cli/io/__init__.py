"""Checkpoint IO: lazy readers for every input form and a streaming, atomic safetensors writer."""
