"""The fp16guard command line (installed as the package fp16guard_cli)."""
