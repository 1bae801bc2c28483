"""The v2 HTTP/REST front."""
