"""Volumes: persistent directories owned by an organization, bind-mounted into sandboxes."""
