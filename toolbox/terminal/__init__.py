"""The browser terminal: an xterm.js page on its own port, attached to the daemon's PTYs."""
