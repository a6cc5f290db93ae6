"""Clients of the network daemons the mesh runs on: Syncthing, yggdrasil, chrony."""
