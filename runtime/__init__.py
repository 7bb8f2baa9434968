"""The local sandbox runtime: toolbox daemons in their own Linux namespaces (bubblewrap),
limited by cgroups, registered with the preview proxy's file registry."""
