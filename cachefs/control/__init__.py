"""The control socket: how `cachefs prefetch`, `unpin` and friends reach a running daemon.

JSON lines over a unix stream socket in the runtime directory, readable only
by the user who mounted. A client sends one request line; the daemon answers
with one or more lines and closes. Every request is an object with an "op";
a failed one is answered {"error": "..."}.
"""
