"""Computer use on an X display: Xvfb, xdotool and ImageMagick `import`, driven as subprocesses."""
