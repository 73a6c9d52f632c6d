"""Remotes that speak plain HTTP: a lean HTTP/1.1 transport, the client
settings shared with S3, and servers with directory indexes."""
